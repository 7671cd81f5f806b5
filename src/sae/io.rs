//! SAE folders on disk.
//!
//! - **SAELens** (written and read): `cfg.json` ([`SaeConfig`]) and
//!   `sae_weights.safetensors` with `W_enc [d_in, d_sae]`, `b_enc`, `W_dec
//!   [d_sae, d_in]`, `b_dec`, and `threshold [d_sae]` (JumpReLU) or `b_gate`,
//!   `r_mag`, `b_mag` (gated, which has no `b_enc`). A BatchTopK SAE is written
//!   as JumpReLU with its learned threshold, as SAELens does. Which tensors an
//!   architecture has is its own business (`Architecture::saved_tensors`).
//! - **sparsify** (read): `cfg.json` (`num_latents` or `expansion_factor`, `k`,
//!   `d_in`) and `sae.safetensors` with `encoder.weight [d_sae, d_in]`,
//!   `encoder.bias`, `W_dec`, `b_dec`: a TopK SAE that subtracts `b_dec`
//!   first. A folder named `layers.N` is sparsify's residual stream after
//!   layer N, i.e. `blocks.N.hook_resid_post`.

use std::path::Path;

use serde_json::Value;
use tch::{Kind, Tensor};

use super::autoencoder::Sae;
use super::config::SaeConfig;
use super::registry::architecture;
use super::weights::SaeWeights;
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::io::safetensors::{read_safetensors, write_safetensors};
use crate::io::tensor_bag::TensorBag;

pub const CONFIG_FILE: &str = "cfg.json";
pub const SAELENS_WEIGHTS_FILE: &str = "sae_weights.safetensors";
pub const SPARSIFY_WEIGHTS_FILE: &str = "sae.safetensors";

/// Writes `sae` as a SAELens folder (creating `dir`). Each file is written
/// atomically, weights first, so a crash never leaves a config that points at
/// half-written weights.
pub fn save_sae(sae: &Sae, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let w = &sae.weights;
    let mut cfg = sae.cfg.clone();
    let w_enc = w.w_enc.f_tr()?.f_contiguous()?;
    let mut tensors: Vec<(&str, Tensor)> = vec![
        ("W_enc", w_enc),
        ("W_dec", w.w_dec.shallow_clone()),
        ("b_dec", w.b_dec.shallow_clone()),
    ];
    tensors.extend(sae.architecture().saved_tensors(w, &mut cfg)?);
    cfg.dtype = "float32".into();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let kinds: Vec<Tensor> = refs
        .iter()
        .map(|(_, t)| t.f_to_kind(Kind::Float))
        .collect::<std::result::Result<_, _>>()?;
    let named: Vec<(&str, &Tensor)> = refs.iter().zip(&kinds).map(|((n, _), t)| (*n, t)).collect();
    write_safetensors(&dir.join(SAELENS_WEIGHTS_FILE), &named)?;
    let text = serde_json::to_string_pretty(&cfg)?;
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// The tensors of `file`, each converted to f32 as it is taken.
struct FloatTensors(TensorBag);

impl FloatTensors {
    /// Tensor `name`, which must have shape `expected` (an error naming the
    /// file and both shapes otherwise), in f32.
    fn take_shaped(&mut self, name: &str, expected: &[i64]) -> Result<Tensor> {
        Ok(self.0.take_shaped(name, expected)?.f_to_kind(Kind::Float)?)
    }
}

fn float_tensors(file: &Path) -> Result<FloatTensors> {
    Ok(FloatTensors(TensorBag::new(
        read_safetensors(file)?,
        file.display().to_string(),
    )))
}

/// Loads a SAELens or sparsify SAE folder onto the CPU, in f32.
pub fn load_sae(dir: &Path) -> Result<Sae> {
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(Error::malformed(
            dir,
            format!("not an SAE folder: no {CONFIG_FILE}"),
        ));
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::malformed(&cfg_path, format!("invalid JSON: {e}")))?;
    if dir.join(SAELENS_WEIGHTS_FILE).is_file() {
        load_saelens(dir, value)
    } else if dir.join(SPARSIFY_WEIGHTS_FILE).is_file() {
        load_sparsify(dir, &value)
    } else {
        Err(Error::malformed(
            dir,
            format!("no {SAELENS_WEIGHTS_FILE} (SAELens) or {SPARSIFY_WEIGHTS_FILE} (sparsify)"),
        ))
    }
}

fn load_saelens(dir: &Path, value: Value) -> Result<Sae> {
    let cfg_path = dir.join(CONFIG_FILE);
    let cfg: SaeConfig = serde_json::from_value(value)
        .map_err(|e| Error::malformed(&cfg_path, format!("not an SAELens config: {e}")))?;
    cfg.validate()?;
    let (d_in, d_sae) = (cfg.d_in as i64, cfg.d_sae as i64);
    let file = dir.join(SAELENS_WEIGHTS_FILE);
    let mut t = float_tensors(&file)?;
    // Every tensor is checked against the config before any arithmetic.
    let w_enc = t.take_shaped("W_enc", &[d_in, d_sae])?;
    let w_dec = t.take_shaped("W_dec", &[d_sae, d_in])?;
    let mut weights = SaeWeights::from_matrices(w_enc.f_tr()?.f_contiguous()?, w_dec);
    weights.b_dec = t.take_shaped("b_dec", &[d_in])?;
    // The architectures' own tensors (biases, thresholds, gates) are per latent.
    architecture(&cfg.architecture)?
        .load_tensors(&mut weights, &mut |name| t.take_shaped(name, &[d_sae]))?;
    if cfg.extra.get(RESCALE_KEY).and_then(Value::as_bool) == Some(true) {
        fold_decoder_norms(&mut weights)?;
    }
    Sae::new(cfg, weights)
}

/// SAELens TopK's `rescale_acts_by_decoder_norm`: scores are multiplied by
/// each latent's decoder norm and activations divided by it before decoding.
pub const RESCALE_KEY: &str = "rescale_acts_by_decoder_norm";

/// Folds decoder row norms into the encoder (`W_enc[i]`, `b_enc[i]` times
/// `‖W_dec[i]‖`, `W_dec[i]` divided by it): afterwards the rescaling is a
/// no-op and plain encode/decode give SAELens's activations and reconstruction.
fn fold_decoder_norms(w: &mut SaeWeights) -> Result<()> {
    let norms = w
        .w_dec
        .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    w.w_enc = w.w_enc.f_mul(&norms)?;
    w.b_enc = w.b_enc.f_mul(&norms.f_squeeze_dim(1)?)?;
    w.w_dec = w.w_dec.f_div(&norms)?;
    Ok(())
}

fn load_sparsify(dir: &Path, value: &Value) -> Result<Sae> {
    let cfg_path = dir.join(CONFIG_FILE);
    let file = dir.join(SPARSIFY_WEIGHTS_FILE);
    let mut t = float_tensors(&file)?;
    let w_enc = t.0.take("encoder.weight")?.f_to_kind(Kind::Float)?;
    let (d_sae, d_in) = match w_enc.size()[..] {
        [a, b] => (a as usize, b as usize),
        _ => {
            return Err(Error::malformed(&file, "encoder.weight is not a matrix"));
        }
    };
    let get = |key: &str| value.get(key).and_then(Value::as_u64).map(|v| v as usize);
    let k = get("k").ok_or_else(|| Error::malformed(&cfg_path, "sparsify config without `k`"))?;
    if let Some(n) = get("num_latents").filter(|&n| n > 0) {
        if n != d_sae {
            return Err(Error::malformed(
                &cfg_path,
                format!("num_latents {n} but encoder.weight has {d_sae} rows"),
            ));
        }
    }
    if let Some(d) = get("d_in") {
        if d != d_in {
            return Err(Error::malformed(
                &cfg_path,
                format!("d_in {d} but encoder.weight has {d_in} columns"),
            ));
        }
    }
    for key in ["skip_connection", "transcode"] {
        if value.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(Error::malformed(
                &cfg_path,
                format!("sparsify `{key}` (a transcoder) is not supported, only autoencoders"),
            ));
        }
    }
    if value
        .get("activation")
        .and_then(Value::as_str)
        .is_some_and(|a| a != "topk")
    {
        return Err(Error::malformed(
            &cfg_path,
            "only sparsify's `topk` activation is supported",
        ));
    }
    let mut cfg = SaeConfig::new("topk", d_in, d_sae);
    cfg.k = Some(k);
    let folder = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some(layer) = folder
        .strip_prefix("layers.")
        .and_then(|l| l.parse::<usize>().ok())
    {
        cfg.metadata.hook_name = Some(format!("blocks.{layer}.hook_resid_post"));
    }
    cfg.metadata
        .extra
        .insert("converted_from".into(), Value::from("sparsify"));
    let (rows, cols) = (d_sae as i64, d_in as i64);
    let mut weights = SaeWeights::from_matrices(w_enc, t.take_shaped("W_dec", &[rows, cols])?);
    weights.b_enc = t.take_shaped("encoder.bias", &[rows])?;
    weights.b_dec = t.take_shaped("b_dec", &[cols])?;
    Sae::new(cfg, weights)
}
