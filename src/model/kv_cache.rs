//! Key/value cache for incremental decoding: preallocated per layer, written
//! in place, so a decode step never copies the past.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Keys and values of every layer, `[batch, n_kv_heads, capacity, d_head]`.
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// An empty cache for `n_layers` layers that holds up to `capacity` positions.
    pub fn new(
        n_layers: usize,
        batch: i64,
        n_kv_heads: i64,
        d_head: i64,
        capacity: i64,
        kind: Kind,
        device: Device,
    ) -> Self {
        let shape = [batch, n_kv_heads, capacity, d_head];
        let alloc = || Tensor::zeros(shape, (kind, device));
        KvCache {
            keys: (0..n_layers).map(|_| alloc()).collect(),
            values: (0..n_layers).map(|_| alloc()).collect(),
            len: 0,
            capacity,
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes this call's `k`, `v` `[batch, n_kv, seq, d_head]` for `layer` after
    /// the cached positions and returns views of all keys and values so far.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let seq = k.size()[2];
        let (keys, values, _) = self.layer_tensors(layer, seq)?;
        keys.narrow(2, self.len, seq).f_copy_(k)?;
        values.narrow(2, self.len, seq).f_copy_(v)?;
        let total = self.len + seq;
        Ok((keys.narrow(2, 0, total), values.narrow(2, 0, total)))
    }

    /// The whole key and value tensors of `layer` and the capacity, after
    /// checking that `seq` more positions fit.
    pub fn layer_tensors(&self, layer: usize, seq: i64) -> Result<(&Tensor, &Tensor, i64)> {
        if self.len + seq > self.capacity {
            return Err(Error::InvalidArgument(format!(
                "KV cache holds {} positions; {} cached + {seq} new exceed it",
                self.capacity, self.len
            )));
        }
        match (self.keys.get(layer), self.values.get(layer)) {
            (Some(k), Some(v)) => Ok((k, v, self.capacity)),
            _ => Err(Error::InvalidArgument(format!(
                "KV cache has no layer {layer}"
            ))),
        }
    }

    /// Marks `seq` more positions as cached; called once per forward, after all layers.
    pub fn advance(&mut self, seq: i64) {
        self.len += seq;
    }
}
