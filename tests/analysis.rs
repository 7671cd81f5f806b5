//! RSA, attention ratios and probes over prompt sets: the RDMs and rank
//! correlations against scipy (fixture from scripts/make_rsa_fixture.py),
//! span mapping (multi-byte text, BOS, misaligned spans), clear errors, and
//! each analysis end to end on the tiny Llama fixture.

mod common;

use std::path::Path;

use saescope::analysis::attention_ratio::{attention_ratio, RatioSpans};
use saescope::analysis::probe::{run_probes, ProbeConfig, ProbeRequest, ProbeTarget};
use saescope::analysis::prompts::{tokenize, Prompt, PromptSet};
use saescope::analysis::rsa::{
    rdm, run_rsa, zscore, Dissimilarity, HypothesisSource, RsaConfig, RsaRequest,
};
use saescope::analysis::runner::Pooling;
use saescope::analysis::stats::{kendall_tau_b, spearman, upper_triangle, RankCorrelation};
use saescope::hooks::HookPoint;
use tch::Tensor;

fn reference() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rsa/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn matrix(v: &serde_json::Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn assert_close(a: &[Vec<f64>], b: &[Vec<f64>], what: &str) {
    for (ra, rb) in a.iter().zip(b) {
        for (x, y) in ra.iter().zip(rb) {
            assert!((x - y).abs() < 1e-9, "{what}: {x} against scipy's {y}");
        }
    }
}

#[test]
fn rdms_and_rank_correlations_match_scipy() {
    let r = reference();
    let reps = matrix(&r["representations"]);
    let flat: Vec<f64> = reps.iter().flatten().copied().collect();
    let x = Tensor::from_slice(&flat).view([reps.len() as i64, reps[0].len() as i64]);
    let hypothesis = matrix(&r["hypothesis"]);
    for (name, how) in [
        ("cosine", Dissimilarity::Cosine),
        ("euclidean", Dissimilarity::Euclidean),
        ("correlation", Dissimilarity::Correlation),
    ] {
        let ours = rdm(&x, how).unwrap();
        assert_close(&ours, &matrix(&r["rdm"][name]), name);
        let z = rdm(&zscore(&x).unwrap(), how).unwrap();
        assert_close(&z, &matrix(&r["rdm_zscored"][name]), name);
        let (a, b) = (upper_triangle(&ours), upper_triangle(&hypothesis));
        let s = r["spearman"][name].as_f64().unwrap();
        let k = r["kendall"][name].as_f64().unwrap();
        assert!((spearman(&a, &b) - s).abs() < 1e-12, "{name} Spearman");
        assert!((kendall_tau_b(&a, &b) - k).abs() < 1e-12, "{name} Kendall");
        assert!((spearman(&a, &a) - r["spearman_self"].as_f64().unwrap()).abs() < 1e-12);
    }
}

fn prompt(id: &str, condition: &str, text: &str, spans: &[(&str, [usize; 2])]) -> Prompt {
    Prompt {
        id: id.into(),
        group: Some(id.trim_end_matches(|c: char| c.is_alphabetic()).into()),
        condition: condition.into(),
        text: text.into(),
        spans: spans.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
        label: None,
        value: None,
        target: None,
    }
}

#[test]
fn spans_map_to_tokens_through_multibyte_text_and_bos() {
    let model = common::tiny_llama();
    let tok = &model.tokenizer;
    // Characters, not bytes: "é" and "—" are 2 and 3 bytes.
    let text = "Café — the park. Where is Zoë?";
    let chars: Vec<char> = text.chars().collect();
    let find = |w: &str| {
        let s: Vec<char> = w.chars().collect();
        (0..chars.len())
            .find(|&i| chars[i..].starts_with(&s))
            .unwrap()
    };
    let park = find(" the park.");
    let zoe = find(" Zoë");
    let p = prompt(
        "a",
        "c",
        text,
        &[
            ("relevant", [park, park + 10]),
            ("query", [zoe + 1, zoe + 4]),
        ],
    );
    let t = tokenize(&p, tok).unwrap();
    assert_eq!(t.ids[0], tok.bos_id().unwrap());
    let (ids, offsets) = tok.encode_with_offsets(text, true).unwrap();
    assert_eq!(ids, t.ids);
    let covered = |r: &std::ops::Range<usize>| -> String {
        let (a, b) = (offsets[r.start].0, offsets[r.end - 1].1);
        text[a..b].to_string()
    };
    assert_eq!(covered(&t.spans["relevant"]).trim(), "the park.");
    assert_eq!(covered(&t.spans["query"]).trim(), "Zoë");
    assert!(
        t.spans.values().all(|r| r.start >= 1),
        "BOS is never inside a span"
    );

    // A span that cuts a word is an error naming the span.
    let bad = prompt("b", "c", text, &[("query", [park + 3, park + 6])]);
    let err = tokenize(&bad, tok).unwrap_err().to_string();
    assert!(err.contains("`query`") && err.contains("token"), "{err}");
}

fn write_set(dir: &Path, prompts: &[serde_json::Value]) -> std::path::PathBuf {
    let path = dir.join("set.jsonl");
    let lines: Vec<String> = prompts.iter().map(|p| p.to_string()).collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// Twelve prompts, half per condition, paired by group, with spans.
fn tiny_set(dir: &Path) -> PromptSet {
    let mut prompts = Vec::new();
    let names = ["Anna", "Ben", "Cleo", "Dan", "Eve", "Finn"];
    for (i, name) in names.iter().enumerate() {
        for (condition, prefix) in [("no_examples", ""), ("with_examples", "Tom went home. ")] {
            let story = format!("{prefix}{name} went to the park. Sam went to the shop.");
            let question = format!(" Where did {name} go?");
            let text = format!("{story}{question}");
            let n = |s: &str| s.chars().count();
            let p0 = n(prefix);
            let rel_end = p0 + n(name) + n(" went to the park.");
            prompts.push(serde_json::json!({
                "id": format!("g{i}-{condition}"), "group": format!("g{i}"),
                "condition": condition, "text": text,
                "spans": {"relevant": [p0, rel_end], "irrelevant": [rel_end, n(&story)],
                          "query": [n(&story), n(&text)]},
                "label": if i % 2 == 0 { "even" } else { "odd" }, "value": i as f64,
                "target": " park"
            }));
        }
    }
    PromptSet::load(&write_set(dir, &prompts)).unwrap()
}

#[test]
fn rsa_ratios_and_probes_run_end_to_end_on_a_tiny_model() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let set = tiny_set(dir.path());
    let n_layers = model.model.config().n_layers;
    let hooks = HookPoint::expand("blocks.*.hook_resid_post", n_layers).unwrap();
    let request = RsaRequest {
        hooks: hooks.clone(),
        span: "query".into(),
        pooling: Pooling::Mean,
        condition: None,
        hypotheses: vec![HypothesisSource::Field("condition".into())],
        cfg: RsaConfig {
            dissimilarity: Dissimilarity::Cosine,
            zscore: true,
            correlation: RankCorrelation::Spearman,
            permutations: 50,
            seed: 0,
        },
    };
    let report = run_rsa(&model, &set, &request, &mut |_, _| {}).unwrap();
    assert_eq!(report.hooks.len(), n_layers);
    assert_eq!(report.prompt_ids.len(), 12);
    for h in &report.hooks {
        assert_eq!(h.rdm.len(), 12);
        let fit = &h.fits[0];
        assert!(fit.correlation.abs() <= 1.0 && (1.0 / 51.0..=1.0).contains(&fit.p_value));
    }
    let written = report.save(&dir.path().join("rsa")).unwrap();
    assert!(written.iter().all(|p| p.is_file()));

    let spans = RatioSpans {
        query: "query".into(),
        relevant: "relevant".into(),
        irrelevant: "irrelevant".into(),
        per_token: false,
    };
    let ratios = attention_ratio(&model, &set, &spans, 99, 0, &mut |_, _, _| {}).unwrap();
    assert_eq!(ratios.conditions.len(), 2);
    let heads = model.model.config().n_heads as usize;
    for c in &ratios.conditions {
        assert_eq!(c.prompts, 6);
        assert_eq!(c.per_head.len(), n_layers);
        assert!(c.per_head.iter().all(|l| l.len() == heads));
        assert!(c.mean > 0.0 && c.mean.is_finite());
        assert!(c.accuracy.is_some());
    }
    let paired = ratios.paired.as_ref().unwrap();
    assert_eq!((paired.overall.n, paired.per_layer.len()), (6, n_layers));
    ratios.save(&dir.path().join("ratio")).unwrap();

    let probe_request = ProbeRequest {
        hooks: hooks[..1].to_vec(),
        span: "query".into(),
        pooling: Pooling::Last,
        condition: Some("with_examples".into()),
        target: ProbeTarget::Value,
        cfg: ProbeConfig {
            folds: 3,
            l2: 1.0,
            seed: 0,
        },
    };
    let probes = run_probes(&model, &set, &probe_request, &mut |_, _| {}).unwrap();
    assert_eq!((probes.n_prompts, probes.hooks.len()), (6, 1));
    assert!(probes.hooks[0].score.score.is_finite());
}

#[test]
fn unknown_spans_empty_conditions_and_mismatched_files_are_clear_errors() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let set = tiny_set(dir.path());
    let hooks = vec![HookPoint::resid_post(0)];
    let mut request = RsaRequest {
        hooks,
        span: "answer".into(),
        pooling: Pooling::Mean,
        condition: None,
        hypotheses: vec![HypothesisSource::Field("condition".into())],
        cfg: RsaConfig {
            dissimilarity: Dissimilarity::Cosine,
            zscore: false,
            correlation: RankCorrelation::Spearman,
            permutations: 10,
            seed: 0,
        },
    };
    let err = |r: &RsaRequest| {
        run_rsa(&model, &set, r, &mut |_, _| {})
            .unwrap_err()
            .to_string()
    };
    assert!(
        err(&request).contains("no span `answer`"),
        "{}",
        err(&request)
    );
    request.span = "query".into();
    request.condition = Some("few_shot".into());
    let e = err(&request);
    assert!(
        e.contains("no prompts of condition `few_shot`") && e.contains("with_examples"),
        "{e}"
    );
    request.condition = None;
    let h = dir.path().join("h.json");
    std::fs::write(&h, "[[0, 1], [1, 0]]").unwrap();
    request.hypotheses = vec![HypothesisSource::File(h)];
    assert!(err(&request).contains("12×12"), "{}", err(&request));

    // Malformed files name the line; spans outside the text are refused.
    let bad = write_set(
        dir.path(),
        &[serde_json::json!({"id": "x", "condition": "c", "text": "abc", "spans": {"q": [1, 9]}})],
    );
    let e = PromptSet::load(&bad).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("`q`"), "{e}");
    std::fs::write(&bad, "{\"id\": 1}").unwrap();
    assert!(PromptSet::load(&bad)
        .unwrap_err()
        .to_string()
        .contains("line 1"));
}

#[test]
fn the_icl_task_files_align_with_smollm2_and_the_cli_writes_its_reports() {
    let model = saescope::model::load_model("smollm2-135m", tch::Device::Cpu, tch::Kind::Float)
        .expect("the default model (scripts/setup.sh installs it)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/icl");
    for task in [
        "linear_regression",
        "reading_comprehension",
        "prompt_injection",
    ] {
        let set = PromptSet::load(&root.join(format!("{task}.jsonl"))).unwrap();
        assert_eq!(set.conditions(), ["no_examples", "with_examples"], "{task}");
        for p in &set.prompts {
            let t = tokenize(p, &model.tokenizer).unwrap_or_else(|e| panic!("{task}: {e}"));
            assert!(
                t.target_id.is_some() && t.spans.contains_key("query"),
                "{task} {}",
                p.id
            );
        }
    }
    // The first 8 groups of reading comprehension through the CLI.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root.join("reading_comprehension.jsonl")).unwrap();
    let subset = dir.path().join("rc.jsonl");
    std::fs::write(
        &subset,
        text.lines().take(16).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let out = dir.path().join("ratio");
    let (ok, stdout, err) = common::saescope(&[
        "attention-ratio",
        "--prompts",
        subset.to_str().unwrap(),
        "--model",
        "smollm2-135m",
        "--permutations",
        "99",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("no_examples → with_examples") && stdout.contains("over 8 groups"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("attention_ratio.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["conditions"][0]["per_layer"]
            .as_array()
            .unwrap()
            .len(),
        30
    );
    assert!(
        out.join("ratio_heads_with_examples.svg").is_file()
            && out.join("ratio_layers.svg").is_file()
    );
    let (ok, _, err) = common::saescope(&[
        "rsa",
        "--prompts",
        subset.to_str().unwrap(),
        "--model",
        "smollm2-135m",
        "--hook",
        "blocks.20.hook_resid_post",
        "--span",
        "noun",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no span `noun`"), "{err}");
}
