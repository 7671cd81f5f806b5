//! Host copies of a parameter tensor's rows for the fused decode step, which
//! asks for the same rows at every step: rebuilt only when the tensor
//! changes (another tensor, or an in-place update, which bumps libtorch's
//! version counter).

use tch::{Device, Kind, Tensor};

use crate::error::Result;

#[derive(Default)]
pub struct HostRows {
    /// Storage address, version counter, shape and scale of the copy.
    key: Option<(usize, i64, Vec<i64>, u64)>,
    rows: Vec<Vec<f32>>,
}

impl HostRows {
    /// Each row of `t [n, ...]`, flattened and multiplied by `scale`, in f32.
    pub fn get(&mut self, t: &Tensor, scale: f64) -> Result<&[Vec<f32>]> {
        let key = (
            t.data_ptr() as usize,
            t.f_internal_version()?,
            t.size(),
            scale.to_bits(),
        );
        if self.key.as_ref() != Some(&key) {
            let n = t.size().first().copied().unwrap_or(0);
            let host = t
                .f_detach()?
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_mul_scalar(scale)?
                .f_reshape([n, -1])?;
            self.rows = (0..n)
                .map(|i| Ok(Vec::<f32>::try_from(host.f_get(i)?)?))
                .collect::<Result<_>>()?;
            self.key = Some(key);
        }
        Ok(&self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_in_place_update_or_a_new_scale_rebuilds_the_rows() {
        let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let mut rows = HostRows::default();
        assert_eq!(rows.get(&t, 1.0).unwrap(), [vec![1.0, 2.0], vec![3.0, 4.0]]);
        let _ = t.f_add_scalar_(1.0).unwrap();
        assert_eq!(rows.get(&t, 1.0).unwrap()[0], [2.0, 3.0]);
        assert_eq!(rows.get(&t, 2.0).unwrap()[1], [8.0, 10.0]);
    }
}
