//! The next-token evaluation of Patchscopes (Ghandeharioun et al. 2024,
//! section 4.1): at source positions of held-out text, how well each layer's
//! hidden state predicts the model's own next token when decoded by the
//! token-identity Patchscope, by the logit lens, and by an affine map to the
//! last layer fit by least squares on other positions.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use super::patchscope::{fit_affine, score, Scores, Target, TOKEN_IDENTITY_PROMPT};
use crate::data::corpus::Corpus;
use crate::data::packing::{windows_tensor, PackConfig, Packer};
use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::io::atomic::write_atomic;
use crate::model::{ForwardInput, LoadedModel, LogitsFor};
use crate::plots::lines_svg;

/// What to evaluate on.
#[derive(Debug, Clone)]
pub struct NextTokenEvalConfig {
    /// Source positions scored (after the training positions, so held out).
    pub positions: usize,
    /// Positions the affine baseline is fit on.
    pub train_positions: usize,
    /// Tokens per window of the corpus, BOS included.
    pub context: usize,
    /// Source layers (the target layer is the same).
    pub layers: Vec<usize>,
    /// Patched rows per target forward.
    pub chunk: i64,
}

/// One layer's three decoders.
#[derive(Debug, Clone, Serialize)]
pub struct LayerEval {
    pub layer: usize,
    pub patchscope: Scores,
    pub logit_lens: Scores,
    pub affine: Scores,
}

/// The result of [`evaluate_next_token`].
#[derive(Debug, Clone, Serialize)]
pub struct NextTokenEval {
    pub model: String,
    pub corpus: String,
    pub positions: usize,
    pub train_positions: usize,
    pub target_prompt: String,
    pub layers: Vec<LayerEval>,
    pub seconds: f64,
}

/// `[n, d]` hidden states per layer and `[n, vocab]` log-probs of `n`
/// positions (every position after BOS) of the next windows of `packer`.
fn gather(
    model: &LoadedModel,
    packer: &mut Packer,
    n: usize,
    hooks: &[HookPoint],
    with_log_probs: bool,
) -> Result<(Vec<Tensor>, Option<Tensor>)> {
    let mut hidden: Vec<Vec<Tensor>> = hooks.iter().map(|_| Vec::new()).collect();
    let mut log_probs = Vec::new();
    let mut have = 0usize;
    while have < n {
        let windows = packer.next_windows(4)?;
        if windows.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the corpus ran out after {have} of {n} positions"
            )));
        }
        let tokens = windows_tensor(&windows, model.model.device())?;
        let logits = with_log_probs.then_some(LogitsFor::All);
        let mut run = model
            .model
            .run_with_cache(&ForwardInput::tokens(&tokens), hooks, logits)?;
        let seq = tokens.size()[1];
        let take = |t: Tensor| -> Result<Tensor> {
            let d = t.size()[2];
            Ok(t.f_narrow(1, 1, seq - 1)?
                .f_reshape([-1, d])?
                .f_to_kind(Kind::Float)?)
        };
        for (i, &hook) in hooks.iter().enumerate() {
            hidden[i].push(take(run.take(hook)?)?);
        }
        if let Some(l) = run.logits.take() {
            log_probs.push(take(l.f_log_softmax(-1, Kind::Float)?)?);
        }
        have += windows.len() * (seq as usize - 1);
    }
    let cut = |parts: Vec<Tensor>| -> Result<Tensor> {
        Ok(Tensor::f_cat(&parts, 0)?.f_narrow(0, 0, n as i64)?)
    };
    let hidden = hidden.into_iter().map(cut).collect::<Result<_>>()?;
    let log_probs = if with_log_probs {
        Some(cut(log_probs)?)
    } else {
        None
    };
    Ok((hidden, log_probs))
}

/// Top token ids `[n]` of `h [n, d]` read through the final norm and unembedding.
fn lens_top(model: &LoadedModel, h: &Tensor) -> Result<Tensor> {
    let m = &model.model;
    let h = h.f_to_kind(m.kind())?.f_to_device(m.device())?;
    let logits = tch::no_grad(|| m.final_norm(&h).f_matmul(&m.unembed_weight().f_tr()?))?;
    Ok(logits.f_argmax(-1, false)?.f_to_device(tch::Device::Cpu)?)
}

/// Runs the evaluation on `corpus`.
pub fn evaluate_next_token(
    model: &LoadedModel,
    corpus: &Corpus,
    corpus_name: &str,
    cfg: &NextTokenEvalConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<NextTokenEval> {
    let started = std::time::Instant::now();
    let n_layers = model.model.config().n_layers;
    if cfg.layers.iter().any(|&l| l >= n_layers) || cfg.layers.is_empty() || cfg.positions == 0 {
        return Err(Error::InvalidArgument(format!(
            "layers must be in 0..{n_layers} and positions positive"
        )));
    }
    let mut hooks: Vec<HookPoint> = cfg
        .layers
        .iter()
        .map(|&l| HookPoint::resid_post(l))
        .collect();
    let last = HookPoint::resid_post(n_layers - 1);
    if !hooks.contains(&last) {
        hooks.push(last);
    }
    let last_index = hooks
        .iter()
        .position(|h| *h == last)
        .unwrap_or(hooks.len() - 1);
    let pack = PackConfig::for_tokenizer(&model.tokenizer, cfg.context);
    let mut packer = Packer::new(corpus, &model.tokenizer, pack)?;
    let (train, _) = gather(model, &mut packer, cfg.train_positions, &hooks, false)?;
    let (eval, log_probs) = gather(model, &mut packer, cfg.positions, &hooks, true)?;
    let log_probs = log_probs.ok_or_else(|| Error::InvalidArgument("no log-probs".into()))?;
    let log_probs = log_probs.f_to_device(tch::Device::Cpu)?;
    let ids = model.tokenizer.encode(TOKEN_IDENTITY_PROMPT, true)?;
    let mut layers = Vec::with_capacity(cfg.layers.len());
    for (i, &layer) in cfg.layers.iter().enumerate() {
        let h = &eval[i];
        let target = Target {
            model,
            ids: ids.clone(),
            layer,
            position: ids.len() - 1,
        };
        let patched = target.patched_logits(h, cfg.chunk)?.f_argmax(-1, false)?;
        let affine = fit_affine(&train[i], &train[last_index])?;
        let mapped = affine.apply(h)?;
        layers.push(LayerEval {
            layer,
            patchscope: score(&patched.f_to_device(tch::Device::Cpu)?, &log_probs)?,
            logit_lens: score(&lens_top(model, h)?, &log_probs)?,
            affine: score(&lens_top(model, &mapped)?, &log_probs)?,
        });
        progress(i + 1, cfg.layers.len());
    }
    Ok(NextTokenEval {
        model: model.spec.clone(),
        corpus: corpus_name.to_string(),
        positions: cfg.positions,
        train_positions: cfg.train_positions,
        target_prompt: TOKEN_IDENTITY_PROMPT.to_string(),
        layers,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl NextTokenEval {
    /// Writes `patchscope_eval.json` and the Precision@1 and surprisal curves
    /// by layer (`precision_at_1.svg`, `surprisal.svg`) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = dir.join("patchscope_eval.json");
        write_atomic(&json, serde_json::to_string_pretty(self)?.as_bytes())?;
        let mut written = vec![json];
        type Pick = fn(&LayerEval) -> Scores;
        let methods: [(&str, Pick); 3] = [
            ("token identity (Patchscope)", |l| l.patchscope),
            ("logit lens", |l| l.logit_lens),
            ("affine to the last layer", |l| l.affine),
        ];
        for (file, metric, get_value) in [
            (
                "precision_at_1.svg",
                "Precision@1",
                (|s: Scores| s.precision_at_1) as fn(Scores) -> f64,
            ),
            ("surprisal.svg", "surprisal (nats)", |s: Scores| s.surprisal),
        ] {
            let series: Vec<(String, Vec<(f64, f64)>)> = methods
                .iter()
                .map(|(name, pick)| {
                    let pts = self
                        .layers
                        .iter()
                        .map(|l| (l.layer as f64, get_value(pick(l))))
                        .collect();
                    (name.to_string(), pts)
                })
                .collect();
            let title = format!(
                "next-token {metric} by source layer, {} held-out positions",
                self.positions
            );
            let path = dir.join(file);
            write_atomic(
                &path,
                lines_svg(&series, "layer", metric, &title)?.as_bytes(),
            )?;
            written.push(path);
        }
        Ok(written)
    }
}
