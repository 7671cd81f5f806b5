//! SAE folders: SAELens and sparsify files written by those libraries load and
//! encode exactly as the libraries do; saescope's own files round-trip; the
//! folded input normalisation changes nothing; broken folders give clear errors.

use std::path::{Path, PathBuf};

use saescope::io::safetensors::read_safetensors;
use saescope::sae::{load_sae, save_sae, Sae, SaeConfig};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sae")
        .join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn saelens_folders_encode_and_decode_as_saelens_does() {
    for name in [
        "saelens_standard",
        "saelens_topk",
        "saelens_topk_rescaled",
        "saelens_jumprelu",
        "saelens_gated",
        "saelens_standard_layer_norm",
        "sparsify_topk",
    ] {
        let dir = fixture(name);
        let sae = load_sae(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let reference = read_safetensors(&dir.join("reference.safetensors")).unwrap();
        let (acts, recon) = sae.forward(&reference["input"]).unwrap();
        let d_acts = max_diff(&acts, &reference["feature_acts"]);
        let d_recon = max_diff(&recon, &reference["reconstruction"]);
        assert!(
            d_acts < 1e-5 && d_recon < 1e-5,
            "{name}: acts {d_acts}, recon {d_recon}"
        );
        // Something is active and something is not: the comparison means something.
        let active = acts
            .gt(0.0)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        assert!(
            active > 0.0 && active < 1.0,
            "{name}: active fraction {active}"
        );
    }
    let sparsify = load_sae(&fixture("sparsify_topk")).unwrap();
    assert_eq!(
        (sparsify.cfg.architecture.as_str(), sparsify.cfg.k),
        ("topk", Some(4))
    );
}

fn random_sae(arch: &str, seed: u64) -> Sae {
    let mut cfg = SaeConfig::new(arch, 8, 32);
    cfg.k = Some(3);
    cfg.apply_b_dec_to_input = arch != "standard";
    let mut sae = Sae::init(cfg, seed, Device::Cpu).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed + 100);
    let w = &mut sae.weights;
    w.b_enc = saescope::io::rng::normal(&mut rng, &[32], 0.2);
    w.b_dec = saescope::io::rng::normal(&mut rng, &[8], 0.5);
    if let Some(t) = w.log_threshold.as_mut() {
        *t = saescope::io::rng::normal(&mut rng, &[32], 0.3) - 2.0;
    }
    if let Some(t) = w.r_mag.as_mut() {
        *t = saescope::io::rng::normal(&mut rng, &[32], 0.3);
    }
    if let Some(t) = w.b_mag.as_mut() {
        *t = saescope::io::rng::normal(&mut rng, &[32], 0.3);
    }
    if let Some(t) = w.batch_threshold.as_mut() {
        *t = Tensor::from(0.2f32);
    }
    sae
}

#[test]
fn every_architecture_round_trips_through_a_saelens_folder() {
    let x = saescope::io::rng::normal(&mut rand::SeedableRng::seed_from_u64(9), &[20, 8], 1.0);
    for arch in saescope::sae::ARCHITECTURES {
        let sae = random_sae(arch, 1);
        let dir = tempfile::tempdir().unwrap();
        save_sae(&sae, dir.path()).unwrap();
        let back = load_sae(dir.path()).unwrap();
        let (a, r) = sae.forward(&x).unwrap();
        let (a2, r2) = back.forward(&x).unwrap();
        assert!(
            max_diff(&a, &a2) < 1e-6 && max_diff(&r, &r2) < 1e-6,
            "{arch}"
        );
        let expected = if arch == "batchtopk" {
            "jumprelu"
        } else {
            arch
        };
        assert_eq!(back.cfg.architecture, expected);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("cfg.json")).unwrap())
                .unwrap();
        for key in [
            "architecture",
            "d_in",
            "d_sae",
            "dtype",
            "apply_b_dec_to_input",
            "normalize_activations",
            "metadata",
        ] {
            assert!(cfg.get(key).is_some(), "{arch}: cfg.json lacks {key}");
        }
    }
}

#[test]
fn folding_the_input_scale_leaves_features_and_raw_reconstructions_unchanged() {
    let x = saescope::io::rng::normal(&mut rand::SeedableRng::seed_from_u64(5), &[20, 8], 3.0);
    let scale = 0.37;
    for arch in saescope::sae::ARCHITECTURES {
        let sae = random_sae(arch, 2);
        // What training sees: scaled inputs; what users want back: raw units.
        let (acts, recon_scaled) = sae.forward(&(&x * scale)).unwrap();
        let mut folded = random_sae(arch, 2);
        folded.weights.fold_input_scale(scale).unwrap();
        let (acts2, recon) = folded.forward(&x).unwrap();
        assert!(max_diff(&acts, &acts2) < 1e-5, "{arch}: features changed");
        assert!(
            max_diff(&(recon_scaled / scale), &recon) < 1e-4,
            "{arch}: reconstruction changed"
        );
    }
}

#[test]
fn broken_folders_and_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_sae(dir.path()).err().unwrap().to_string();
    assert!(err.contains("no cfg.json"), "{err}");

    let sae = random_sae("topk", 3);
    save_sae(&sae, dir.path()).unwrap();
    // Truncated weights.
    let weights = dir.path().join("sae_weights.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_sae(dir.path()).err().unwrap().to_string();
    assert!(err.contains("sae_weights.safetensors"), "{err}");
    std::fs::write(&weights, &bytes).unwrap();

    // A config whose d_sae disagrees with the tensors.
    let cfg_path = dir.path().join("cfg.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, text.replace("\"d_sae\": 32", "\"d_sae\": 33")).unwrap();
    let err = load_sae(dir.path()).err().unwrap().to_string();
    assert!(err.contains("W_enc") && err.contains("33"), "{err}");
    std::fs::write(&cfg_path, text.replace("\"topk\"", "\"relu6\"")).unwrap();
    let err = load_sae(dir.path()).err().unwrap().to_string();
    assert!(err.contains("unknown SAE architecture `relu6`"), "{err}");
    std::fs::write(&cfg_path, "{not json").unwrap();
    let err = load_sae(dir.path()).err().unwrap().to_string();
    assert!(err.contains("invalid JSON"), "{err}");

    // Wrong input width.
    let err = sae
        .encode(&Tensor::zeros([4, 7], (Kind::Float, Device::Cpu)))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("[-1, 8]"), "{err}");
}
