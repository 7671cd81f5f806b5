//! The model's dense layers, `x · Wᵀ + b`.
//!
//! libtorch sends an f32 `linear` on the CPU to MKL's sgemm, which on this
//! project's AMD machines runs its 256-bit kernels; oneDNN (which libtorch
//! already uses for bf16) runs 512-bit ones. On the layers of SmolLM2-135M
//! with 2 threads, oneDNN's f32 product takes 1.3–2× less time from 128 rows
//! up (the 49152-wide unembedding ~2.8× less), and the same at 16 rows
//! (measured side by side on a Zen 5 EPYC; the sums differ only in their
//! order). So f32 layers that need no gradient go through oneDNN; everything
//! else, or a libtorch without oneDNN, keeps `linear`.

use tch::{Device, Kind, Tensor};

/// `x [.., k] · w [n, k]ᵀ + bias [n]` → `[.., n]`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
    if through_onednn(x, w, bias) {
        if let Ok(y) = onednn_linear(x, w, bias) {
            return y;
        }
    }
    x.linear(w, bias)
}

fn through_onednn(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> bool {
    x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && w.kind() == Kind::Float
        && !x.requires_grad()
        && !w.requires_grad()
        && bias.is_none_or(|b| !b.requires_grad() && b.kind() == Kind::Float)
        && x.dim() >= 1
        && w.dim() == 2
}

/// oneDNN's product takes its input in oneDNN's own layout and returns one:
/// two copies of the activations, small beside the product.
fn onednn_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor, tch::TchError> {
    let mut size = x.size();
    let k = w.size()[1];
    let rows = x.f_reshape([-1, k])?.f_contiguous()?;
    let y = rows
        .f_to_mkldnn(None)?
        .f_mkldnn_linear(w, bias)?
        .f_to_dense(None, false)?;
    if let Some(last) = size.last_mut() {
        *last = w.size()[0];
    }
    y.f_view(size.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_libtorch_linear_with_and_without_bias() {
        tch::manual_seed(6);
        let o = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([3, 5, 40], o);
        let w = Tensor::randn([24, 40], o);
        let b = Tensor::randn([24], o);
        for bias in [None, Some(&b)] {
            let ours = linear(&x, &w, bias);
            let reference = x.linear(&w, bias);
            assert_eq!(ours.size(), [3, 5, 24]);
            let diff = (&ours - &reference).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "{diff}");
        }
        // Gradients still flow (through libtorch's own linear).
        let x = x.set_requires_grad(true);
        linear(&x, &w, Some(&b)).sum(Kind::Float).backward();
        assert_eq!(x.grad().size(), [3, 5, 40]);
    }
}
