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
    /// Sequences in use, the first `rows` of the batch: a forward sees only
    /// these (the continuous-batching engine grows and shrinks it).
    rows: i64,
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
            rows: batch,
        }
    }

    /// Sequences the cache was made for.
    pub fn batch(&self) -> i64 {
        self.keys.first().map_or(0, |k| k.size()[0])
    }

    /// Sequences a forward sees: the first `rows` of the batch.
    pub fn rows(&self) -> i64 {
        self.rows
    }

    /// Makes the first `rows` sequences the ones a forward sees.
    pub fn set_rows(&mut self, rows: i64) -> Result<()> {
        if !(0..=self.batch()).contains(&rows) {
            return Err(Error::InvalidArgument(format!(
                "KV cache holds {} sequences, not {rows}",
                self.batch()
            )));
        }
        self.rows = rows;
        Ok(())
    }

    /// Copies positions `0..from.len()` of sequence `from_row` of `from` into
    /// sequence `row` of this cache at positions `at..`, and marks every
    /// position up to their end as cached.
    pub fn copy_sequence(
        &mut self,
        from: &KvCache,
        from_row: i64,
        row: i64,
        at: i64,
    ) -> Result<()> {
        let n = from.len;
        if row >= self.batch() || from_row >= from.batch() || at < 0 || at + n > self.capacity {
            return Err(Error::InvalidArgument(format!(
                "KV cache copy of {n} positions from sequence {from_row} to sequence {row} at {at} \
                 does not fit {} sequences × {} positions",
                self.batch(),
                self.capacity
            )));
        }
        for (mine, theirs) in [(&self.keys, &from.keys), (&self.values, &from.values)] {
            for (m, t) in mine.iter().zip(theirs) {
                m.get(row)
                    .narrow(1, at, n)
                    .f_copy_(&t.get(from_row).narrow(1, 0, n))?;
            }
        }
        self.len = self.len.max(at + n);
        Ok(())
    }

    /// Copies the cached positions of sequence `from` over sequence `to`.
    pub fn move_sequence(&mut self, from: i64, to: i64) -> Result<()> {
        if from == to || self.len == 0 {
            return Ok(());
        }
        for tensors in [&self.keys, &self.values] {
            for t in tensors {
                t.get(to)
                    .narrow(1, 0, self.len)
                    .f_copy_(&t.get(from).narrow(1, 0, self.len))?;
            }
        }
        Ok(())
    }

    /// Moves every sequence's cached positions by `delta` (left when
    /// negative): position `t` becomes `t + delta`, and positions that fall
    /// off the start are dropped. The engine does this to make room.
    pub fn shift(&mut self, delta: i64) -> Result<()> {
        let new_len = self.len + delta;
        if new_len < 0 || new_len > self.capacity {
            return Err(Error::InvalidArgument(format!(
                "KV cache shift by {delta} of {} positions leaves the capacity of {}",
                self.len, self.capacity
            )));
        }
        let (from, to, n) = if delta >= 0 {
            (0, delta, self.len)
        } else {
            (-delta, 0, new_len)
        };
        if n > 0 && delta != 0 {
            for tensors in [&self.keys, &self.values] {
                for t in tensors {
                    // Through a copy: the two ranges may overlap.
                    let source = t.narrow(2, from, n);
                    let mut moved = source.f_empty_like()?;
                    moved.f_copy_(&source)?;
                    t.narrow(2, to, n).f_copy_(&moved)?;
                }
            }
        }
        self.len = new_len;
        Ok(())
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
        let (keys, values) = (self.in_use(keys), self.in_use(values));
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

    /// The sequences in use of one layer's keys or values.
    fn in_use(&self, t: &Tensor) -> Tensor {
        if self.rows == self.batch() {
            t.shallow_clone()
        } else {
            t.narrow(0, 0, self.rows)
        }
    }

    /// Marks `seq` more positions as cached; called once per forward, after all layers.
    pub fn advance(&mut self, seq: i64) {
        self.len += seq;
    }
}
