//! `eval sae` on the tiny Llama fixture: a lossless SAE recovers all of the
//! loss, the restart-at-the-hook shortcut equals splicing into a full
//! forward, and an SAE of the wrong width is refused.

mod common;

use saescope::data::{Corpus, PackConfig, Packer};
use saescope::eval::{evaluate_sae, SaeEvalConfig};
use saescope::hooks::{HookPoint, Hooks};
use saescope::model::{ForwardInput, LogitsFor, StopAt};
use saescope::sae::{Sae, SaeConfig, SaeSplice, SaeWeights};
use tch::{Device, Kind, Tensor};

/// A standard SAE with latents +e_i and −e_i: ReLU(x) − ReLU(−x) = x exactly.
fn lossless_sae(d: i64) -> Sae {
    let eye = Tensor::eye(d, (Kind::Float, Device::Cpu));
    let rows = Tensor::cat(&[&eye, &(-&eye)], 0);
    let mut cfg = SaeConfig::new("standard", d as usize, 2 * d as usize);
    cfg.apply_b_dec_to_input = false;
    Sae::new(cfg, SaeWeights::from_matrices(rows.copy(), rows)).unwrap()
}

fn corpus(dir: &std::path::Path) -> Corpus {
    let path = dir.join("corpus.txt");
    std::fs::write(&path, common::corpus_text(60)).unwrap();
    Corpus::open(path.to_str().unwrap(), "text").unwrap()
}

fn eval_cfg() -> SaeEvalConfig {
    SaeEvalConfig {
        tokens: 96,
        context: 16,
        batch: 3,
        skip_windows: 2,
    }
}

#[test]
fn a_lossless_sae_recovers_all_of_the_loss() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let d = model.model.config().d_model;
    let sae = lossless_sae(d);
    // resid_post restarts at the next block; mlp_out splices into a full forward.
    for hook in [HookPoint::resid_post(0), HookPoint::mlp_out(1)] {
        let r = evaluate_sae(&model, &sae, hook, &corpus, &eval_cfg(), &mut ()).unwrap();
        assert!(
            (r.ce_loss_with_sae - r.ce_loss_clean).abs() < 1e-4,
            "{hook}: {r:?}"
        );
        assert!(
            r.kl_div_with_sae.abs() < 1e-5,
            "{hook}: KL {}",
            r.kl_div_with_sae
        );
        assert!(
            (r.ce_loss_score - 1.0).abs() < 1e-3,
            "{hook}: score {}",
            r.ce_loss_score
        );
        assert!(r.reconstruction.fvu < 1e-10);
        // (A random model's loss need not rise under ablation, but its predictions change.)
        assert!(
            r.kl_div_with_ablation > 0.01,
            "{hook}: ablation changed nothing"
        );
        assert_eq!(r.windows, 6);
        assert_eq!(r.scored_tokens, 6 * 15);
    }
}

#[test]
fn restarting_at_the_hook_equals_splicing_into_a_full_forward() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let d = model.model.config().d_model as usize;
    let mut cfg = SaeConfig::new("topk", d, 4 * d);
    cfg.k = Some(3);
    let sae = Sae::init(cfg, 11, Device::Cpu).unwrap();
    let hook = HookPoint::resid_post(0);
    let c = eval_cfg();
    let report = evaluate_sae(&model, &sae, hook, &corpus, &c, &mut ()).unwrap();

    // The same windows through full forwards with the SAE spliced in.
    let mut packer = Packer::new(
        &corpus,
        &model.tokenizer,
        PackConfig::for_tokenizer(&model.tokenizer, c.context),
    )
    .unwrap();
    packer.skip(c.skip_windows).unwrap();
    let windows = packer.next_windows(6).unwrap();
    let ids: Vec<i64> = windows.iter().flat_map(|w| w.tokens.clone()).collect();
    let tokens = Tensor::from_slice(&ids).view([6, c.context as i64]);
    let mut splice = SaeSplice::new(&sae, hook, 1);
    let logits = tch::no_grad(|| {
        model
            .model
            .forward(
                &ForwardInput::tokens(&tokens),
                None,
                &mut Hooks::new().with(&mut splice),
                StopAt::Logits(LogitsFor::All),
            )
            .unwrap()
            .unwrap()
    });
    let logp = logits.narrow(1, 0, 15).log_softmax(-1, Kind::Float);
    let ce = -logp
        .gather(-1, &tokens.narrow(1, 1, 15).unsqueeze(-1), false)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(
        (ce - report.ce_loss_with_sae).abs() < 1e-4,
        "{ce} vs {}",
        report.ce_loss_with_sae
    );
    assert!(
        report.kl_div_with_sae > 0.01,
        "a lossy SAE must move the predictions"
    );
}

#[test]
fn an_sae_of_the_wrong_width_is_refused() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let sae = lossless_sae(7);
    let err = evaluate_sae(
        &model,
        &sae,
        HookPoint::resid_post(0),
        &corpus(dir.path()),
        &eval_cfg(),
        &mut (),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("blocks.0.hook_resid_post") && err.contains("[7]"),
        "{err}"
    );
}
