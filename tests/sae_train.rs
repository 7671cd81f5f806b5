//! SAE training end to end on synthetic data with known features: recovery,
//! the decoder constraint, resuming, and failures that must be reported.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use saescope::sae::SaeArchitecture;
use saescope::train::config::{InputNormalization, SaeSpec};
use saescope::train::trainer::Quiet;
use saescope::train::{train, MemoryFeed, TrainConfig, TrainOptions};
use tch::{Kind, Tensor};

/// `n` samples in `d` dimensions, each a sum of about `active` of `features`
/// random unit directions with magnitudes in [0.5, 1.5]. Returns (samples
/// `[n, d]`, directions `[features, d]`).
fn sparse_data(n: usize, d: usize, features: usize, active: f64, seed: u64) -> (Tensor, Tensor) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dirs = saescope::io::rng::normal(&mut rng, &[features as i64, d as i64], 1.0);
    let dirs = &dirs / dirs.norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
    let p = active / features as f64;
    let mut coef = vec![0f32; n * features];
    for c in coef.iter_mut() {
        if rng.random::<f64>() < p {
            *c = 0.5 + rng.random::<f32>();
        }
    }
    let coef = Tensor::from_slice(&coef).view([n as i64, features as i64]);
    (coef.matmul(&dirs), dirs)
}

/// Mean over true directions of the best cosine with any decoder row.
fn recovery(w_dec: &Tensor, dirs: &Tensor) -> f64 {
    let rows = w_dec / w_dec.norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
    let cos = dirs.matmul(&rows.tr());
    let (best, _) = cos.max_dim(1, false);
    best.mean(Kind::Float).double_value(&[])
}

fn synthetic_config(spec: SaeSpec, tokens: u64, lr: f64) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.data.batch_size = 1024;
    cfg.data.tokens = tokens;
    cfg.optim.lr = Some(lr);
    cfg.optim.lr_warmup_steps = 20;
    cfg.run.dead_tokens = 200_000;
    cfg.saes = vec![spec];
    cfg
}

fn in_memory() -> TrainOptions {
    TrainOptions {
        in_memory: true,
        ..TrainOptions::default()
    }
}

#[test]
fn topk_and_standard_saes_recover_known_directions() {
    let (x, dirs) = sparse_data(100_000, 64, 512, 5.0, 1);
    let cases = [
        (
            SaeSpec {
                architecture: SaeArchitecture::TopK,
                hook: "synthetic".into(),
                expansion: 16,
                k: Some(8),
                auxk_alpha: 1.0 / 32.0,
                ..SaeSpec::default()
            },
            3e-3,
        ),
        (
            SaeSpec {
                architecture: SaeArchitecture::Standard,
                hook: "synthetic".into(),
                expansion: 16,
                k: None,
                sparsity_coefficient: Some(1.0),
                ..SaeSpec::default()
            },
            3e-3,
        ),
    ];
    for (spec, lr) in cases {
        let arch = spec.architecture;
        let cfg = synthetic_config(spec, 1_500_000, lr);
        let mut feed = MemoryFeed::new(vec![x.shallow_clone()], cfg.data.batch_size, 0).unwrap();
        let summary = train(&cfg, &mut feed, &in_memory(), &mut Quiet).unwrap();
        let sae = &summary.saes[0].sae;
        let score = recovery(&sae.weights.w_dec, &dirs);
        let last = summary.saes[0].last.clone().unwrap();
        eprintln!(
            "{arch}: recovery {score:.3}, fvu {:.4}, l0 {:.1}",
            last.fvu, last.l0
        );
        assert!(score >= 0.9, "{arch}: mean best cosine {score:.3} < 0.9");
    }
}

fn small_run(out: &std::path::Path) -> TrainConfig {
    let mut cfg = synthetic_config(
        SaeSpec {
            hook: "synthetic".into(),
            expansion: 4,
            k: Some(4),
            ..SaeSpec::default()
        },
        12 * 256,
        1e-3,
    );
    cfg.data.batch_size = 256;
    cfg.data.normalize = InputNormalization::None;
    cfg.run.out = out.to_path_buf();
    cfg.run.checkpoint_every_tokens = 0;
    cfg.run.dead_tokens = 512;
    cfg
}

fn run(
    cfg: &TrainConfig,
    x: &Tensor,
    opts: &TrainOptions,
) -> saescope::Result<saescope::train::TrainSummary> {
    let mut feed = MemoryFeed::new(vec![x.shallow_clone()], cfg.data.batch_size, 0)?;
    train(cfg, &mut feed, opts, &mut Quiet)
}

#[test]
fn a_killed_and_resumed_run_equals_an_uninterrupted_one() {
    let (x, _) = sparse_data(2000, 16, 64, 3.0, 2);
    let dir = tempfile::tempdir().unwrap();
    let whole = small_run(&dir.path().join("whole"));
    run(&whole, &x, &TrainOptions::default()).unwrap();

    let parts = small_run(&dir.path().join("parts"));
    let stopped = TrainOptions {
        stop_after_steps: Some(5),
        ..TrainOptions::default()
    };
    let first = run(&parts, &x, &stopped).unwrap();
    assert!(first.interrupted && first.steps == 5);
    // Without --resume the checkpoint is protected.
    let err = run(&parts, &x, &TrainOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
    // A different config is refused.
    let mut other = parts.clone();
    other.optim.lr = Some(5e-3);
    let resume = TrainOptions {
        resume: true,
        ..TrainOptions::default()
    };
    let err = run(&other, &x, &resume).err().unwrap().to_string();
    assert!(err.contains("different config"), "{err}");
    let done = run(&parts, &x, &resume).unwrap();
    assert_eq!(done.steps, 12);

    let name = whole.saes[0].name();
    for file in ["sae_weights.safetensors", "metrics.jsonl", "cfg.json"] {
        let a = std::fs::read(dir.path().join("whole").join(&name).join(file)).unwrap();
        let b = std::fs::read(dir.path().join("parts").join(&name).join(file)).unwrap();
        assert!(
            a == b,
            "{file} differs between the whole and the resumed run"
        );
    }
    let lines = std::fs::read_to_string(dir.path().join("parts").join(&name).join("metrics.jsonl"))
        .unwrap();
    assert_eq!(lines.lines().count(), 12);
    for plot in ["training_curves.svg", "feature_density.svg"] {
        assert!(dir.path().join("parts").join(&name).join(plot).is_file());
    }
}

#[test]
fn unit_norm_decoders_stay_unit_norm_and_free_ones_are_left_alone() {
    let (x, _) = sparse_data(2000, 16, 64, 3.0, 3);
    for arch in ["topk", "batchtopk", "jumprelu", "gated", "standard"] {
        let mut cfg = small_run(std::path::Path::new("unused"));
        cfg.saes[0].architecture = arch.parse().unwrap();
        let s = &run(&cfg, &x, &in_memory()).unwrap().saes[0];
        let norms = s
            .sae
            .weights
            .w_dec
            .norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
        let off = (norms - 1.0).abs().max().double_value(&[]);
        if arch == "standard" {
            assert!(off > 1e-3, "standard decoder rows should move freely");
        } else {
            assert!(
                off < 1e-5,
                "{arch}: decoder rows drifted from unit norm by {off}"
            );
        }
    }
}

#[test]
fn a_nan_in_the_data_stops_training_with_a_clear_error() {
    let (x, _) = sparse_data(1024, 16, 64, 3.0, 4);
    let _ = x.get(7).get(3).fill_(f64::NAN);
    let cfg = small_run(std::path::Path::new("unused"));
    let err = run(&cfg, &x, &in_memory()).err().unwrap().to_string();
    assert!(err.contains("loss is NaN"), "{err}");
}

#[test]
fn every_shipped_training_recipe_parses_and_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for dir in ["train", "configs"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let cfg = TrainConfig::from_toml_file(&path).unwrap_or_else(|e| panic!("{e}"));
                cfg.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
    }
    assert!(seen >= 4, "found {seen} recipes");
    // The written-out defaults are the defaults.
    let defaults = TrainConfig::from_toml_file(&root.join("configs/defaults.toml")).unwrap();
    assert_eq!(defaults, TrainConfig::default());
}
