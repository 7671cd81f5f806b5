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
    /// For an f32 CPU cache, the addresses of each layer's keys and values,
    /// read once here: the fused decode step needs them for every layer of
    /// every step, and asking libtorch takes ~1 µs a layer (empty otherwise).
    host: Vec<[usize; 2]>,
    /// Elements of one layer's keys (or values).
    layer_len: usize,
}

/// One layer of an f32 CPU cache as the fused decode step reads it.
pub struct HostLayer {
    pub keys: *mut f32,
    pub values: *mut f32,
    /// Elements of the keys (and of the values).
    pub len: usize,
    pub capacity: usize,
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
        let keys: Vec<Tensor> = (0..n_layers).map(|_| alloc()).collect();
        let values: Vec<Tensor> = (0..n_layers).map(|_| alloc()).collect();
        let host = if device == Device::Cpu && kind == Kind::Float {
            keys.iter()
                .zip(&values)
                .map(|(k, v)| [k.data_ptr() as usize, v.data_ptr() as usize])
                .collect()
        } else {
            Vec::new()
        };
        KvCache {
            keys,
            values,
            len: 0,
            capacity,
            host,
            layer_len: shape.iter().product::<i64>().max(0) as usize,
        }
    }

    /// `layer` of an f32 CPU cache, after checking that `seq` more positions fit.
    pub fn host_layer(&self, layer: usize, seq: i64) -> Result<HostLayer> {
        self.layer_tensors(layer, seq)?;
        let [keys, values] = *self.host.get(layer).ok_or_else(|| {
            Error::InvalidArgument("the fused decode step needs an f32 CPU KV cache".into())
        })?;
        Ok(HostLayer {
            keys: keys as *mut f32,
            values: values as *mut f32,
            len: self.layer_len,
            capacity: self.capacity as usize,
        })
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
