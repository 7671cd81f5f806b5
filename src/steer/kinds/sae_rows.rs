//! SAE-feature steering as row edits for the fused decode step: the SAE's
//! encoder and decoder rows copied once into host vectors, the encoder's
//! product over the step's rows shared out by the step's threads, and the
//! clamp, ablate and add edits of `sae_features` and the amplify and
//! calibrate strategies of `sae_runtime` computed row by row, as their
//! libtorch paths compute them on tensors.

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::hooks::{ProductWeights, RowFunction, RowProducts};
use crate::sae::Sae;

/// A feature edit of `sae_features`: add `α·W_dec[f]`, clamp `f` to a value,
/// or ablate it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeatureOp {
    Add(f32),
    Clamp(f32),
    Ablate,
}

/// A strategy of `sae_runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Amplify,
    Calibrate,
}

/// How pre-activations become the activations wanted.
enum Rule {
    /// The pre-activations themselves (the runtime strategies read them).
    Pre,
    /// `ReLU(z)` (standard SAEs).
    Relu,
    /// `ReLU(z)·[z > θ_f]` (JumpReLU), one θ per wanted feature.
    Threshold(Vec<f32>),
    /// `ReLU(z)·[ReLU(z) > θ]` (BatchTopK at inference).
    BatchThreshold(f32),
    /// `ReLU(z_f)` when `z_f` is among the `k` largest of all latents (TopK).
    TopK(usize),
}

/// Encoder rows as stored for the products.
enum EncoderRows {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

/// An SAE's encoder for a few features of one row at a time.
pub struct HostEncoder {
    /// Subtracted from the input first, when the SAE does.
    b_dec: Option<Vec<f32>>,
    /// `[n, d_in]` encoder rows: every latent's for TopK, else the wanted
    /// ones', in f32 or (for a bf16 model) bf16.
    w_enc: EncoderRows,
    b_enc: Vec<f32>,
    /// Row of `w_enc` of each wanted feature.
    rows_of: Vec<usize>,
    rule: Rule,
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        t.f_to_kind(Kind::Float)?.f_contiguous()?.f_reshape([-1])?,
    )?)
}

impl HostEncoder {
    /// The encoder of `features` of `sae`; raw pre-activations when
    /// `pre_only`; its rows in bf16 when `bf16` (for a bf16 model, whose
    /// step then reads half the bytes in its fast bf16 products). `None`
    /// for an architecture without a host rule (gated).
    pub fn new(sae: &Sae, features: &[usize], pre_only: bool, bf16: bool) -> Result<Option<Self>> {
        let w = &sae.weights;
        let index =
            |fs: &[usize]| Tensor::from_slice(&fs.iter().map(|&f| f as i64).collect::<Vec<_>>());
        let picked = |t: &Tensor| -> Result<Vec<f32>> {
            host(&t.f_index_select(0, &index(features).f_to_device(t.device())?)?)
        };
        let rule = match (pre_only, sae.cfg.architecture.as_str()) {
            (true, _) => Rule::Pre,
            (false, "standard") => Rule::Relu,
            (false, "jumprelu") => match &w.log_threshold {
                Some(log) => Rule::Threshold(picked(&log.f_exp()?)?),
                None => return Ok(None),
            },
            (false, "batchtopk") => match &w.batch_threshold {
                Some(t) => Rule::BatchThreshold(host(t)?.first().copied().unwrap_or(0.0).max(0.0)),
                None => return Ok(None),
            },
            (false, "topk") => Rule::TopK(sae.cfg.require_k()?),
            _ => return Ok(None),
        };
        let (w_enc, b_enc, rows_of) = if matches!(rule, Rule::TopK(_)) {
            (host(&w.w_enc)?, host(&w.b_enc)?, features.to_vec())
        } else {
            (
                picked(&w.w_enc)?,
                picked(&w.b_enc)?,
                (0..features.len()).collect(),
            )
        };
        let w_enc = if bf16 {
            EncoderRows::Bf16(
                w_enc
                    .iter()
                    .map(|v| half::bf16::from_f32(*v).to_bits())
                    .collect(),
            )
        } else {
            EncoderRows::F32(w_enc)
        };
        let b_dec = sae
            .cfg
            .apply_b_dec_to_input
            .then(|| host(&w.b_dec))
            .transpose()?;
        Ok(Some(HostEncoder {
            b_dec,
            w_enc,
            b_enc,
            rows_of,
            rule,
        }))
    }

    /// Pre-activations per row (`n` of them) of the selected rows of `rows`.
    fn product_width(&self) -> usize {
        self.b_enc.len()
    }

    /// The wanted features' activations (or pre-activations) of each of the
    /// `m` rows of `x [m, d_in]`, `[m, wanted]`, the encoder's product
    /// computed by `products`.
    pub fn values(&self, x: &[f32], m: usize, products: &dyn RowProducts) -> Vec<Vec<f32>> {
        let input: Vec<f32> = match &self.b_dec {
            Some(b) => x
                .chunks_exact(b.len())
                .flat_map(|row| row.iter().zip(b).map(|(v, b)| v - b))
                .collect(),
            None => x.to_vec(),
        };
        let n = self.b_enc.len();
        let weights = match &self.w_enc {
            EncoderRows::F32(w) => ProductWeights::F32(w),
            EncoderRows::Bf16(w) => ProductWeights::Bf16(w),
        };
        let pre = products.product(&input, m, weights);
        pre.chunks_exact(n.max(1))
            .take(m)
            .map(|row| {
                let row: Vec<f32> = row.iter().zip(&self.b_enc).map(|(p, b)| p + b).collect();
                self.activations(&row)
            })
            .collect()
    }

    /// The wanted features' values from one row's pre-activations.
    fn activations(&self, pre: &[f32]) -> Vec<f32> {
        self.rows_of
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                let z = pre[r];
                match &self.rule {
                    Rule::Pre => z,
                    Rule::Relu => z.max(0.0),
                    Rule::Threshold(theta) if z > theta[i] => z.max(0.0),
                    Rule::Threshold(_) => 0.0,
                    Rule::BatchThreshold(theta) if z.max(0.0) > *theta => z.max(0.0),
                    Rule::BatchThreshold(_) => 0.0,
                    Rule::TopK(k) => {
                        let above = pre
                            .iter()
                            .enumerate()
                            .filter(|&(j, &p)| p > z || (p == z && j < r))
                            .count();
                        if above < *k {
                            z.max(0.0)
                        } else {
                            0.0
                        }
                    }
                }
            })
            .collect()
    }
}

/// The selected rows of `rows [n, width]`, gathered: `(indices, [m, width])`.
fn gather(rows: &[f32], width: usize, selected: &[bool]) -> (Vec<usize>, Vec<f32>) {
    let picked: Vec<usize> = (0..rows.len() / width).filter(|&r| selected[r]).collect();
    let x = picked
        .iter()
        .flat_map(|&r| rows[r * width..(r + 1) * width].iter().copied())
        .collect();
    (picked, x)
}

/// `sae_features` edits with the error term kept: `a ← a + Σ coef_f ·
/// W_dec[f]`, where a clamp's coefficient is `v − f(a)`, an ablation's
/// `−f(a)` and an addition's `α`.
pub struct FeatureRows {
    encoder: Option<HostEncoder>,
    /// Each edit's operation, the index of its feature among the encoded
    /// ones (clamps and ablations), and its decoder row.
    edits: Vec<(FeatureOp, Option<usize>, Vec<f32>)>,
    width: usize,
}

impl FeatureRows {
    /// `None` when the SAE's architecture has no host rule; `bf16` as for
    /// [`HostEncoder::new`].
    pub fn new(sae: &Sae, edits: &[(usize, FeatureOp)], bf16: bool) -> Result<Option<Self>> {
        let encoded: Vec<usize> = edits
            .iter()
            .filter(|(_, op)| !matches!(op, FeatureOp::Add(_)))
            .map(|(f, _)| *f)
            .collect();
        let encoder = if encoded.is_empty() {
            None
        } else {
            match HostEncoder::new(sae, &encoded, false, bf16)? {
                Some(e) => Some(e),
                None => return Ok(None),
            }
        };
        let mut out = Vec::with_capacity(edits.len());
        let mut next = 0;
        for &(f, op) in edits {
            let slot = (!matches!(op, FeatureOp::Add(_))).then(|| {
                next += 1;
                next - 1
            });
            out.push((op, slot, host(&sae.weights.w_dec.f_get(f as i64)?)?));
        }
        Ok(Some(FeatureRows {
            encoder,
            edits: out,
            width: sae.cfg.d_in,
        }))
    }
}

impl RowFunction for FeatureRows {
    fn width(&self) -> usize {
        self.width
    }

    fn product_width(&self) -> usize {
        self.encoder.as_ref().map_or(0, HostEncoder::product_width)
    }

    fn edit_rows(
        &self,
        rows: &mut [f32],
        selected: &[bool],
        round: &dyn Fn(f32) -> f32,
        products: &dyn RowProducts,
    ) {
        let (picked, x) = gather(rows, self.width, selected);
        if picked.is_empty() {
            return;
        }
        let acts = match &self.encoder {
            Some(e) => e.values(&x, picked.len(), products),
            None => vec![Vec::new(); picked.len()],
        };
        for (&r, acts) in picked.iter().zip(&acts) {
            let row = &mut rows[r * self.width..(r + 1) * self.width];
            let mut delta = vec![0f32; self.width];
            for (op, slot, w_dec) in &self.edits {
                let coef = match (op, slot) {
                    (FeatureOp::Add(alpha), _) => *alpha,
                    (FeatureOp::Clamp(value), Some(i)) => -acts[*i] + *value,
                    (FeatureOp::Ablate, Some(i)) => -acts[*i],
                    _ => continue,
                };
                delta
                    .iter_mut()
                    .zip(w_dec)
                    .for_each(|(d, w)| *d += coef * w);
            }
            for (x, d) in row.iter_mut().zip(delta) {
                *x = round(*x + round(d));
            }
        }
    }
}

/// Wu et al.'s runtime strategies on one row (see `sae_runtime`), the
/// condition (if any) read from the same row.
pub struct RuntimeRows {
    features: HostEncoder,
    condition: Option<(HostEncoder, f64)>,
    /// Decoder rows of the steered features.
    directions: Vec<Vec<f32>>,
    strategy: Strategy,
    magnitude: f64,
    width: usize,
}

impl RuntimeRows {
    pub fn new(
        sae: &Sae,
        features: &[usize],
        condition: Option<(&[usize], f64)>,
        strategy: Strategy,
        magnitude: f64,
        bf16: bool,
    ) -> Result<Option<Self>> {
        let Some(encoder) = HostEncoder::new(sae, features, true, bf16)? else {
            return Ok(None);
        };
        let condition = match condition.filter(|(fs, _)| !fs.is_empty()) {
            Some((fs, threshold)) => match HostEncoder::new(sae, fs, true, bf16)? {
                Some(e) => Some((e, threshold)),
                None => return Ok(None),
            },
            None => None,
        };
        let directions = features
            .iter()
            .map(|&f| host(&sae.weights.w_dec.f_get(f as i64)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(RuntimeRows {
            features: encoder,
            condition,
            directions,
            strategy,
            magnitude,
            width: sae.cfg.d_in,
        }))
    }
}

impl RowFunction for RuntimeRows {
    fn width(&self) -> usize {
        self.width
    }

    fn product_width(&self) -> usize {
        let condition = self
            .condition
            .as_ref()
            .map_or(0, |(e, _)| e.product_width());
        self.features.product_width().max(condition)
    }

    fn edit_rows(
        &self,
        rows: &mut [f32],
        selected: &[bool],
        round: &dyn Fn(f32) -> f32,
        products: &dyn RowProducts,
    ) {
        let (picked, x) = gather(rows, self.width, selected);
        if picked.is_empty() {
            return;
        }
        let m = picked.len();
        let met: Vec<bool> = match &self.condition {
            None => vec![true; m],
            Some((encoder, threshold)) => encoder
                .values(&x, m, products)
                .into_iter()
                .map(|h| {
                    let positive: Vec<f32> = h
                        .into_iter()
                        .map(|v| v.max(0.0))
                        .filter(|v| *v > 0.0)
                        .collect();
                    !positive.is_empty()
                        && f64::from(positive.iter().sum::<f32>() / positive.len() as f32)
                            >= *threshold
                })
                .collect(),
        };
        let pre = self.features.values(&x, m, products);
        let mag = self.magnitude as f32;
        for ((&r, a), met) in picked.iter().zip(&pre).zip(met) {
            if !met {
                continue;
            }
            let row = &mut rows[r * self.width..(r + 1) * self.width];
            let coef: Vec<f32> = match self.strategy {
                Strategy::Amplify => {
                    let gap: Vec<f32> = a.iter().map(|v| (-v.max(0.0) + mag).max(0.0)).collect();
                    let total = gap.iter().sum::<f32>().max(1e-12);
                    gap.iter().map(|g| g / total * mag).collect()
                }
                Strategy::Calibrate => a.iter().map(|v| -v + mag).collect(),
            };
            let mut push = vec![0f32; self.width];
            for (c, dir) in coef.iter().zip(&self.directions) {
                push.iter_mut().zip(dir).for_each(|(p, w)| *p += c * w);
            }
            let moved: Vec<f32> = row.iter().zip(&push).map(|(x, p)| x + p).collect();
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            let new_norm = moved.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            let ratio = norm / new_norm;
            for (x, v) in row.iter_mut().zip(moved) {
                *x = round(v * ratio);
            }
        }
    }
}
