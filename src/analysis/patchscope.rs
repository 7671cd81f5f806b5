//! Patchscopes (Ghandeharioun et al. 2024, arXiv 2401.06102): a hidden
//! representation `h` of a source prompt (layer ℓ, position i) is mapped by
//! `f` and written into a target prompt's forward at (layer ℓ*, position i*),
//! and the target's next token (or generation) is read. Patches go into
//! `blocks.{ℓ*}.hook_resid_post`; the source is `blocks.{ℓ}.hook_resid_post`.
//!
//! The token-identity target prompt is built in, and so is the paper's
//! next-token evaluation: over source positions, Precision@1 (the patched
//! target's top token is the source model's own top next token) and
//! surprisal (−log of the source's probability of the patched top token),
//! beside the logit lens (`h` straight through the final norm and unembedding)
//! and an affine map per layer to the last layer fit by least squares (the
//! paper's baseline, not a trained tuned lens).

use std::path::Path;

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::hooks::{HookContext, HookPoint, Hooks, Intervention};
use crate::io::safetensors::{read_safetensors, write_safetensors};
use crate::model::{generate, ForwardInput, GenerateConfig, LoadedModel, LogitsFor, StopAt};

/// The token-identity prompt: few-shot copies, then `?` to be filled by the patch.
pub const TOKEN_IDENTITY_PROMPT: &str = "cat -> cat\n1135 -> 1135\nhello -> hello\n?";

/// How a source vector becomes a target vector.
#[derive(Debug)]
pub enum Mapping {
    Identity,
    /// `h ↦ W h + b`, `W [d_out, d_in]`, `b [d_out]`.
    Affine {
        weight: Tensor,
        bias: Tensor,
    },
}

impl Mapping {
    /// `[n, d_out]` images of `h [n, d_in]`.
    pub fn apply(&self, h: &Tensor) -> Result<Tensor> {
        match self {
            Mapping::Identity => Ok(h.shallow_clone()),
            Mapping::Affine { weight, bias } => {
                if h.size().last() != weight.size().get(1) {
                    return Err(Error::ShapeMismatch {
                        name: "affine map input".into(),
                        expected: vec![-1, weight.size()[1]],
                        got: h.size(),
                    });
                }
                let h = h.f_to_kind(Kind::Float)?.f_to_device(weight.device())?;
                Ok(h.f_matmul(&weight.f_tr()?)?.f_add(bias)?)
            }
        }
    }

    /// An affine map from a safetensors file with `weight [d_out, d_in]` and
    /// `bias [d_out]`.
    pub fn load(path: &Path) -> Result<Mapping> {
        let mut t = read_safetensors(path)?;
        let mut take = |name: &str| {
            t.remove(name).ok_or_else(|| Error::MissingTensor {
                name: name.into(),
                source_desc: path.display().to_string(),
            })
        };
        let (weight, bias) = (take("weight")?, take("bias")?);
        if weight.dim() != 2 || bias.size() != [weight.size()[0]] {
            return Err(Error::ShapeMismatch {
                name: format!("weight and bias in {}", path.display()),
                expected: vec![bias.size().first().copied().unwrap_or(-1), -1],
                got: weight.size(),
            });
        }
        Ok(Mapping::Affine {
            weight: weight.f_to_kind(Kind::Float)?,
            bias: bias.f_to_kind(Kind::Float)?,
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        match self {
            Mapping::Identity => Err(Error::InvalidArgument(
                "the identity map has no tensors to save".into(),
            )),
            Mapping::Affine { weight, bias } => {
                write_safetensors(path, &[("weight", weight), ("bias", bias)])
            }
        }
    }
}

/// The least-squares affine map from rows of `x [n, d_in]` to rows of
/// `y [n, d_out]` (with a bias; a relative ridge of 1e-6 keeps the normal
/// equations solvable when `n ≤ d_in`).
pub fn fit_affine(x: &Tensor, y: &Tensor) -> Result<Mapping> {
    let (n, d_in) = match x.size().as_slice() {
        [n, d] => (*n, *d),
        other => {
            return Err(Error::InvalidArgument(format!(
                "fitting a map needs [n, d_in] inputs, got {other:?}"
            )))
        }
    };
    if y.dim() != 2 || y.size()[0] != n {
        return Err(Error::InvalidArgument(format!(
            "fitting a map needs one target row per input row ({n} inputs, targets {:?})",
            y.size()
        )));
    }
    let x = x.f_to_kind(Kind::Double)?;
    let y = y.f_to_kind(Kind::Double)?.f_to_device(x.device())?;
    let ones = Tensor::f_ones([n, 1], (Kind::Double, x.device()))?;
    let a = Tensor::f_cat(&[x, ones], 1)?; // [n, d_in + 1]
    let gram = a.f_tr()?.f_matmul(&a)?;
    let scale = gram
        .f_diagonal(0, 0, 1)?
        .f_mean(Kind::Double)?
        .f_double_value(&[])?;
    let eye = Tensor::f_eye(d_in + 1, (Kind::Double, a.device()))?;
    let solution = Tensor::f_linalg_solve(
        &gram.f_add(&eye.f_mul_scalar(1e-6 * scale.max(1e-12))?)?,
        &a.f_tr()?.f_matmul(&y)?,
        true,
    )?; // [d_in + 1, d_out]
    Ok(Mapping::Affine {
        weight: solution
            .f_narrow(0, 0, d_in)?
            .f_tr()?
            .f_to_kind(Kind::Float)?,
        bias: solution.f_select(0, d_in)?.f_to_kind(Kind::Float)?,
    })
}

/// A target prompt and where patches go into it.
pub struct Target<'a> {
    pub model: &'a LoadedModel,
    /// `[T]` token ids.
    pub ids: Vec<i64>,
    pub layer: usize,
    pub position: usize,
}

impl Target<'_> {
    fn check(&self) -> Result<()> {
        let n_layers = self.model.model.config().n_layers;
        if self.layer >= n_layers || self.position >= self.ids.len() {
            return Err(Error::InvalidArgument(format!(
                "target layer {} / position {} out of range ({n_layers} layers, {} tokens)",
                self.layer,
                self.position,
                self.ids.len()
            )));
        }
        Ok(())
    }

    /// Next-token logits `[n, vocab]` (f32) of the target prompt with each
    /// row of `h [n, d_model]` written into `resid_post` of the target layer
    /// at the target position; rows go through in chunks of `chunk`.
    pub fn patched_logits(&self, h: &Tensor, chunk: i64) -> Result<Tensor> {
        self.check()?;
        let model = &self.model.model;
        let device = model.device();
        let ids = Tensor::f_from_slice(&self.ids)?
            .f_view([1, -1])?
            .f_to_device(device)?;
        let hook = HookPoint::resid_post(self.layer);
        let base = model
            .run_with_cache(&ForwardInput::tokens(&ids), &[hook], None)?
            .take(hook)?; // [1, T, d]
        let (t, d) = (base.size()[1], base.size()[2]);
        if h.size() != [h.size()[0], d] {
            return Err(Error::ShapeMismatch {
                name: "patched vectors".into(),
                expected: vec![-1, d],
                got: h.size(),
            });
        }
        let mut out = Vec::new();
        let n = h.size()[0];
        let mut start = 0;
        while start < n {
            let rows = chunk.min(n - start);
            let patch = h
                .f_narrow(0, start, rows)?
                .f_to_device(device)?
                .f_to_kind(model.kind())?;
            let resid = base.f_expand([rows, t, d], false)?.f_contiguous()?;
            resid
                .f_narrow(1, self.position as i64, 1)?
                .f_copy_(&patch.f_unsqueeze(1)?)?;
            let logits = tch::no_grad(|| -> Result<Tensor> {
                if self.layer + 1 < model.config().n_layers {
                    let tokens = ids.f_expand([rows, t], false)?;
                    let input = ForwardInput {
                        start_at: Some((self.layer + 1, &resid)),
                        ..ForwardInput::tokens(&tokens)
                    };
                    model
                        .forward(
                            &input,
                            None,
                            &mut Hooks::new(),
                            StopAt::Logits(LogitsFor::Last),
                        )?
                        .ok_or_else(|| Error::InvalidArgument("no logits".into()))
                } else {
                    let last = resid.f_narrow(1, t - 1, 1)?;
                    Ok(model
                        .final_norm(&last)
                        .f_matmul(&model.unembed_weight().f_tr()?)?)
                }
            })?;
            out.push(logits.f_select(1, -1)?.f_to_kind(Kind::Float)?);
            start += rows;
        }
        Ok(Tensor::f_cat(&out, 0)?)
    }

    /// Greedy generation of `max_new_tokens` from the target prompt with `h
    /// [d_model]` patched in during the prefill (decode steps run unpatched).
    pub fn generate_patched(&self, h: &Tensor, max_new_tokens: usize) -> Result<Vec<i64>> {
        self.check()?;
        let mut patch = PrefillPatch {
            hook: HookPoint::resid_post(self.layer),
            position: self.position as i64,
            vector: h.shallow_clone(),
        };
        let cfg = GenerateConfig {
            max_new_tokens,
            sampling: Default::default(),
            stop_ids: self.model.tokenizer.eos_ids().to_vec(),
        };
        let out = generate(
            &self.model.model,
            std::slice::from_ref(&self.ids),
            &cfg,
            &mut Hooks::new().with(&mut patch),
            |_, _| {},
        )?;
        Ok(out.into_iter().next().unwrap_or_default())
    }
}

/// Writes a vector into one position of a hook during the prompt's forward.
struct PrefillPatch {
    hook: HookPoint,
    position: i64,
    vector: Tensor,
}

impl Intervention for PrefillPatch {
    fn wants(&self, hook: HookPoint) -> bool {
        hook == self.hook
    }

    fn apply(&mut self, _: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>> {
        if ctx.decode_step {
            return Ok(None);
        }
        let out = act.f_detach_copy()?;
        out.f_narrow(1, self.position, 1)?.f_copy_(
            &self
                .vector
                .f_to_kind(act.kind())?
                .f_to_device(act.device())?
                .f_view([1, 1, -1])?
                .f_expand([act.size()[0], 1, act.size()[2]], false)?,
        )?;
        Ok(Some(out))
    }
}

/// Precision@1 and mean surprisal (nats) of some top tokens against the
/// source model's own next-token distributions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scores {
    pub precision_at_1: f64,
    pub surprisal: f64,
}

/// Scores of `top [n]` token ids against source `log_probs [n, vocab]`.
pub fn score(top: &Tensor, log_probs: &Tensor) -> Result<Scores> {
    let own = log_probs.f_argmax(1, false)?;
    let hits = top
        .f_eq_tensor(&own)?
        .f_to_kind(Kind::Double)?
        .f_mean(Kind::Double)?;
    let surprisal = log_probs
        .f_gather(1, &top.f_unsqueeze(1)?, false)?
        .f_neg()?
        .f_mean(Kind::Double)?;
    Ok(Scores {
        precision_at_1: hits.f_double_value(&[])?,
        surprisal: surprisal.f_double_value(&[])?,
    })
}

/// An affine map from `source`'s `resid_post` at `source_layer` to
/// `target`'s at `target_layer`, fit by least squares on `positions`
/// positions (after BOS) of `corpus` windows of `context` tokens fed to both
/// models. The models must share a tokenizer (the same ids for the same
/// text); widths may differ.
pub fn fit_map_on_corpus(
    source: &LoadedModel,
    target: &LoadedModel,
    (source_layer, target_layer): (usize, usize),
    corpus: &crate::data::Corpus,
    positions: usize,
    context: usize,
) -> Result<Mapping> {
    use crate::data::packing::{windows_tensor, PackConfig, Packer};
    let same_tokenizer = source.tokenizer.vocab_size() == target.tokenizer.vocab_size()
        && source.tokenizer.bos_id() == target.tokenizer.bos_id()
        && source
            .tokenizer
            .encode("The models must tokenize this alike: 12 ü!", false)?
            == target
                .tokenizer
                .encode("The models must tokenize this alike: 12 ü!", false)?;
    if !same_tokenizer {
        return Err(Error::InvalidArgument(
            "the two models tokenize text differently; a map between their hidden states needs aligned positions".into(),
        ));
    }
    for (model, layer) in [(source, source_layer), (target, target_layer)] {
        let n = model.model.config().n_layers;
        if layer >= n {
            return Err(Error::InvalidArgument(format!(
                "layer {layer} is out of range for {} ({n} layers)",
                model.spec
            )));
        }
    }
    let mut packer = Packer::new(
        corpus,
        &source.tokenizer,
        PackConfig::for_tokenizer(&source.tokenizer, context),
    )?;
    let (mut xs, mut ys, mut have) = (Vec::new(), Vec::new(), 0usize);
    while have < positions {
        let windows = packer.next_windows(8)?;
        if windows.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the corpus ran out after {have} of {positions} positions"
            )));
        }
        let rows = |model: &LoadedModel, layer: usize| -> Result<Tensor> {
            let tokens = windows_tensor(&windows, model.model.device())?;
            let act = model
                .model
                .hook_rows(&tokens, &[HookPoint::resid_post(layer)])?
                .remove(0);
            let (s, d) = (act.size()[1], act.size()[2]);
            Ok(act
                .f_narrow(1, 1, s - 1)?
                .f_reshape([-1, d])?
                .f_to_kind(Kind::Float)?
                .f_to_device(tch::Device::Cpu)?)
        };
        let x = rows(source, source_layer)?;
        have += x.size()[0] as usize;
        xs.push(x);
        ys.push(rows(target, target_layer)?);
    }
    let n = positions as i64;
    let x = Tensor::f_cat(&xs, 0)?.f_narrow(0, 0, n)?;
    let y = Tensor::f_cat(&ys, 0)?.f_narrow(0, 0, n)?;
    fit_affine(&x, &y)
}
