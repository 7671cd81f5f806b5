//! The SAE commands end to end on the tiny Llama fixture: harvest, train
//! with flags, resume a finished run, evaluate; and their errors.

mod common;

use std::path::Path;

use common::saescope;

fn harvest(corpus: &Path, store: &Path) {
    let flags = [
        "--tokens",
        "3000",
        "--skip-bos",
        "--shard-tokens",
        "600",
        "--json",
    ];
    common::harvest_tiny(corpus, store, &flags);
}

#[test]
fn harvest_train_resume_and_evaluate_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, common::corpus_text(400)).unwrap();
    let store = dir.path().join("acts");
    harvest(&corpus, &store);
    let out = dir.path().join("sae");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--store",
            store.to_str().unwrap(),
            "--tokens",
            "2048",
            "--batch-size",
            "256",
            "--hook",
            "blocks.1.hook_resid_post",
            "--architecture",
            "topk,jumprelu",
            "--expansion",
            "2",
            "--k",
            "4",
            "--lr-warmup-steps",
            "2",
            "--checkpoint-every",
            "1024",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        saescope(&args)
    };
    let (ok, stdout, err) = train(&[]);
    assert!(ok, "{err}");
    assert!(stdout.contains("trained 2 SAE(s) for 8 steps"), "{stdout}");
    for name in [
        "blocks.1.hook_resid_post-topk-x2-k4",
        "blocks.1.hook_resid_post-jumprelu-x2",
    ] {
        for file in [
            "cfg.json",
            "sae_weights.safetensors",
            "metrics.jsonl",
            "training_curves.svg",
            "feature_density.svg",
        ] {
            assert!(out.join(name).join(file).is_file(), "{name}/{file} missing");
        }
    }
    let saved = std::fs::read_to_string(out.join("train_config.toml")).unwrap();
    assert!(saved.contains("architecture = \"jumprelu\""), "{saved}");
    // Training again into the same folder needs --resume; resuming a finished run is a no-op.
    let (ok, _, err) = train(&[]);
    assert!(!ok && err.contains("--resume"), "{err}");
    let (ok, stdout, err) = train(&["--resume"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("for 8 steps"), "{stdout}");

    let sae = out.join("blocks.1.hook_resid_post-topk-x2-k4");
    let report = dir.path().join("eval.json");
    let (ok, stdout, err) = saescope(&[
        "eval",
        "sae",
        "--sae",
        sae.to_str().unwrap(),
        "--model",
        common::TINY_LLAMA,
        "--corpus",
        corpus.to_str().unwrap(),
        "--tokens",
        "64",
        "--context",
        "16",
        "--skip-windows",
        "200",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("ce_loss_score"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["hook"], "blocks.1.hook_resid_post");
    assert!(r["ce_loss_score"].as_f64().unwrap().is_finite());
    assert!(report.with_extension("svg").is_file());
}

#[test]
fn train_and_eval_report_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, common::corpus_text(100)).unwrap();
    let store = dir.path().join("acts");
    harvest(&corpus, &store);
    let s = store.to_str().unwrap();
    let out = dir.path().join("o");
    let o = out.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "train",
                "--store",
                s,
                "--hook",
                "blocks.0.hook_resid_post",
                "--out",
                o,
            ],
            "not `blocks.0.hook_resid_post`",
        ),
        (
            &[
                "train",
                "--store",
                s,
                "--hook",
                "blocks.1.hook_resid_post",
                "--architecture",
                "relu9",
                "--out",
                o,
            ],
            "unknown SAE architecture",
        ),
        (
            &[
                "train",
                "--store",
                s,
                "--hook",
                "blocks.1.hook_resid_post",
                "--compute-dtype",
                "f8",
                "--out",
                o,
            ],
            "compute_dtype",
        ),
        (
            &["eval", "sae", "--sae", s, "--model", common::TINY_LLAMA],
            "not an SAE folder",
        ),
    ];
    for (args, want) in cases {
        let (ok, _, err) = saescope(args);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn steer_learn_evaluate_and_generate_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task.jsonl");
    let lines = [
        r#"{"prompt": "the model reads a", "target": " the", "foil": " model"}"#,
        r#"{"prompt": "a window of tokens", "target": " capital", "foil": " feature"}"#,
    ];
    std::fs::write(&task, lines.join("\n")).unwrap();
    let out = dir.path().join("scale.json");
    let (ok, stdout, err) = saescope(&[
        "steer",
        "learn",
        "--method",
        "activation-scaling",
        "--task",
        task.to_str().unwrap(),
        "--model",
        common::TINY_LLAMA,
        "--epochs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("heatmap"), "{stdout}");
    assert!(out.with_extension("safetensors").is_file() && out.with_extension("svg").is_file());
    let eval_steer = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "steer",
            "--intervention",
            out.to_str().unwrap(),
            "--task",
            task.to_str().unwrap(),
            "--model",
            common::TINY_LLAMA,
        ];
        args.extend_from_slice(extra);
        saescope(&args)
    };
    let (ok, stdout, err) = eval_steer(&["--json"]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["prompts"], 2);
    assert_eq!(r["components_total"], 4, "2 layers × (attention, MLP)");
    let (ok, stdout, err) = saescope(&[
        "generate",
        "--model",
        common::TINY_LLAMA,
        "--prompt",
        "the model",
        "--max-new-tokens",
        "4",
        "--steer",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("== baseline") && stdout.contains("== steered"),
        "{stdout}"
    );
    // A task whose answer is not one token is refused with its line.
    std::fs::write(
        &task,
        r#"{"prompt": "a", "target": " the model", "foil": " the"}"#,
    )
    .unwrap();
    let (ok, _, err) = eval_steer(&[]);
    assert!(!ok && err.contains("line 1"), "{err}");
}

/// Where stderr is not a terminal (CI logs, pipes) long jobs print plain
/// progress lines with what is done, the rate and the ETA.
#[test]
fn progress_shows_as_lines_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_saescope"))
        .env("SAESCOPE_PROGRESS_SECS", "0")
        .args([
            "harvest",
            "--model",
            common::TINY_LLAMA,
            "--hook",
            "blocks.0.hook_resid_post",
            "--tokens",
            "2000",
            "--context",
            "32",
            "--batch",
            "4",
            "--out",
            dir.path().join("acts").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(" tokens (")).collect();
    assert!(lines.len() >= 2, "{err}");
    assert!(
        lines.iter().all(|l| l.contains("/s") && l.contains("ETA")),
        "{err}"
    );
    assert!(!err.contains('\r'), "no carriage returns in a log: {err:?}");
}
