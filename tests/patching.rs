//! Activation and attribution patching on the tiny Llama fixture: patching a
//! run with its own activations changes nothing, replacing the whole first
//! residual gives the clean result exactly, attribution equals exact patching
//! where the metric is linear in the activation, and bad tasks are clear
//! errors.

mod common;

use std::path::{Path, PathBuf};

use saescope::analysis::patching::{
    attribution_patching, exact_patching, grid_correlation, Direction, PatchTask, Run, Unit,
};
use saescope::hooks::{BlockSite, HookPoint};

fn write_task(dir: &Path, lines: &[serde_json::Value]) -> PathBuf {
    let path = dir.join("task.jsonl");
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    path
}

fn task(dir: &Path) -> PathBuf {
    // Single-token words of the tiny vocabulary, swapped one for another.
    let pair = |clean: &str, corrupted: &str| serde_json::json!({"clean": clean, "corrupted": corrupted, "answer": " model", "wrong": " of"});
    write_task(
        dir,
        &[
            pair(
                "the model of the model and the",
                "the model of a model and the",
            ),
            pair("the model and a model of a", "the model and the model of a"),
            pair(
                "the model of a model the of",
                "the model of the model the of",
            ),
        ],
    )
}

const ALL: (Run, Run) = (Run::Clean, Run::Corrupted);

#[test]
fn patching_a_run_with_itself_changes_nothing_and_the_whole_first_residual_restores_it() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let t = PatchTask::load(&task(dir.path()), &model.tokenizer).unwrap();
    let n_layers = model.model.config().n_layers;
    let hooks: Vec<HookPoint> = (0..n_layers).map(HookPoint::resid_pre).collect();
    // Clean activations into the clean run: the metric is 1 everywhere.
    let (grid, base) = exact_patching(
        &model,
        &t,
        &hooks,
        Unit::Position,
        (Run::Clean, Run::Clean),
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(base.clean != base.corrupted);
    for row in &grid.values {
        assert!(row.iter().all(|v| (v - 1.0).abs() < 1e-5), "{row:?}");
    }
    let heads = [HookPoint::Block(0, BlockSite::AttnZ)];
    let (grid, _) = exact_patching(
        &model,
        &t,
        &heads,
        Unit::Head,
        (Run::Clean, Run::Clean),
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(grid.values[0].iter().all(|v| (v - 1.0).abs() < 1e-5));
    // Every position of the first residual from the clean run: exactly clean.
    let (grid, _) = exact_patching(
        &model,
        &t,
        &hooks[..1],
        Unit::All,
        ALL,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert!((grid.values[0][0] - 1.0).abs() < 1e-5, "{:?}", grid.values);
    // Noising with the corrupted run's whole first residual: exactly corrupted.
    let (grid, _) = exact_patching(
        &model,
        &t,
        &hooks[..1],
        Unit::All,
        Direction::Noise.runs(),
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(grid.values[0][0].abs() < 1e-5, "{:?}", grid.values);
}

#[test]
fn attribution_equals_exact_patching_where_the_metric_is_linear() {
    // The logit difference is linear in the final norm's output (the
    // unembedding follows), so the first-order estimate is exact there.
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let t = PatchTask::load(&task(dir.path()), &model.tokenizer).unwrap();
    let hooks = [HookPoint::LnFinal];
    for unit in [Unit::Position, Unit::All] {
        let (exact, _) =
            exact_patching(&model, &t, &hooks, unit, ALL, None, &mut |_, _| {}).unwrap();
        let (approx, _) = attribution_patching(&model, &t, &hooks, unit, ALL, None).unwrap();
        for (a, b) in exact.values[0].iter().zip(&approx.values[0]) {
            assert!(
                (a - b).abs() < 1e-4,
                "{unit:?}: exact {a} against attribution {b}"
            );
        }
    }
    // Elsewhere it is an approximation that still tracks the exact values.
    let n_layers = model.model.config().n_layers;
    let hooks: Vec<HookPoint> = (0..n_layers).map(HookPoint::resid_pre).collect();
    let (exact, _) = exact_patching(
        &model,
        &t,
        &hooks,
        Unit::Position,
        ALL,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    let (approx, _) = attribution_patching(&model, &t, &hooks, Unit::Position, ALL, None).unwrap();
    let r = grid_correlation(&exact, &approx);
    assert!(r > 0.5, "correlation {r}");
}

#[test]
fn bad_tasks_are_clear_errors() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let check = |line: serde_json::Value, want: &str| {
        let path = write_task(dir.path(), &[line]);
        let err = PatchTask::load(&path, &model.tokenizer)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "expected `{want}` in `{err}`");
    };
    check(
        serde_json::json!({"clean": "the model and", "corrupted": "the model and a model", "answer": " a", "wrong": " the"}),
        "equal lengths",
    );
    check(
        serde_json::json!({"clean": "the model and", "corrupted": "the model of", "answer": " window", "wrong": " the"}),
        "not a single token",
    );
    check(serde_json::json!({"clean": "a"}), "line 1");
    let t = PatchTask::load(&task(dir.path()), &model.tokenizer).unwrap();
    let pattern = [HookPoint::Block(0, BlockSite::AttnPattern)];
    let err = exact_patching(
        &model,
        &t,
        &pattern,
        Unit::Position,
        ALL,
        None,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("hook_z"), "{err}");
    let resid = [HookPoint::resid_pre(0)];
    let err = exact_patching(&model, &t, &resid, Unit::Head, ALL, None, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no heads"), "{err}");
}

#[test]
fn the_patch_command_writes_its_report_and_heatmaps() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path());
    let out = dir.path().join("out");
    let (ok, stdout, err) = common::saescope(&[
        "patch",
        "--task",
        task.to_str().unwrap(),
        "--model",
        common::TINY_LLAMA,
        "--sweep",
        "heads",
        "--sweep",
        "resid_pre",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("correlation"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("patching.json")).unwrap()).unwrap();
    assert_eq!(report["pairs"], 3);
    let heads = &report["sweeps"][0]["exact"]["values"];
    assert_eq!(heads.as_array().unwrap().len(), 2, "one row per layer");
    for f in [
        "heads_exact.svg",
        "heads_attribution.svg",
        "resid_pre_exact.svg",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let (ok, _, err) = common::saescope(&[
        "patch",
        "--task",
        task.to_str().unwrap(),
        "--model",
        common::TINY_LLAMA,
        "--sweep",
        "everything",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("everything"), "{err}");
}

#[test]
fn heads_at_chosen_positions_patch_only_there() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let t = PatchTask::load(&task(dir.path()), &model.tokenizer).unwrap();
    let seq = t.pairs[0].clean.len();
    let heads = [
        HookPoint::Block(0, BlockSite::AttnZ),
        HookPoint::Block(1, BlockSite::AttnZ),
    ];
    let every: Vec<usize> = (0..seq).collect();
    let run = |positions: Option<&[usize]>| {
        exact_patching(
            &model,
            &t,
            &heads,
            Unit::Head,
            ALL,
            positions,
            &mut |_, _| {},
        )
        .unwrap()
        .0
    };
    let (all, chosen_all, last) = (run(None), run(Some(&every)), run(Some(&[seq - 1])));
    assert_eq!(all.values, chosen_all.values);
    assert_eq!(last.positions, Some(vec![seq - 1]));
    // Layer 1's heads at the last position reach the logits directly; at
    // the first position (BOS, the same in both runs) nothing changes.
    let bos = run(Some(&[0]));
    assert!(
        bos.values.iter().flatten().all(|v| v.abs() < 1e-5),
        "{:?}",
        bos.values
    );
    let attr_all = attribution_patching(&model, &t, &heads, Unit::Head, ALL, None)
        .unwrap()
        .0;
    let attr_every = attribution_patching(&model, &t, &heads, Unit::Head, ALL, Some(&every))
        .unwrap()
        .0;
    for (a, b) in attr_all
        .values
        .iter()
        .flatten()
        .zip(attr_every.values.iter().flatten())
    {
        assert!((a - b).abs() < 1e-6);
    }
    let bad = |unit: Unit, ps: &[usize]| {
        exact_patching(&model, &t, &heads, unit, ALL, Some(ps), &mut |_, _| {})
            .unwrap_err()
            .to_string()
    };
    assert!(bad(Unit::Head, &[seq]).contains("outside"));
    assert!(bad(Unit::Position, &[0]).contains("head cells only"));
}
