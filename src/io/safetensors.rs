//! Reads Hugging Face safetensors checkpoints (one file or shards listed in
//! `model.safetensors.index.json`) into a [`TensorBag`], and writes named
//! tensors as one safetensors file, atomically.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

use super::names::is_plain_file_name;
use super::tensor_bag::TensorBag;
use crate::error::{Error, Result};

/// The safetensors files of a model folder: the shards named by the index when
/// there is one, else `model.safetensors`.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::malformed(&index, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::malformed(&index, "no `weight_map` object"))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        if shards.is_empty() {
            return Err(Error::malformed(&index, "`weight_map` names no shard"));
        }
        if let Some(bad) = shards.iter().find(|s| !is_plain_file_name(s)) {
            return Err(Error::malformed(
                &index,
                format!("shard `{bad}` is not a file name inside the model folder"),
            ));
        }
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::ModelNotFound(format!(
        "{}: neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    )))
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F64 => Some(Kind::Double),
        Dtype::I64 => Some(Kind::Int64),
        Dtype::I32 => Some(Kind::Int),
        Dtype::U8 => Some(Kind::Uint8),
        Dtype::BOOL => Some(Kind::Bool),
        _ => None,
    }
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    match kind {
        Kind::Float => Some(Dtype::F32),
        Kind::Half => Some(Dtype::F16),
        Kind::BFloat16 => Some(Dtype::BF16),
        Kind::Double => Some(Dtype::F64),
        Kind::Int64 => Some(Dtype::I64),
        Kind::Int => Some(Dtype::I32),
        Kind::Uint8 => Some(Dtype::U8),
        Kind::Bool => Some(Dtype::BOOL),
        _ => None,
    }
}

/// The bytes of a safetensors file holding `tensors` (copied to the CPU).
pub fn safetensors_bytes(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let cpu = t
            .f_detach()?
            .f_to_device(tch::Device::Cpu)?
            .f_contiguous()?;
        let dtype = dtype_of(cpu.kind()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "tensor `{name}` has unsupported kind {:?}",
                cpu.kind()
            ))
        })?;
        let numel = cpu.numel();
        let mut bytes = vec![0u8; numel * cpu.kind().elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut bytes, numel)?;
        let shape: Vec<usize> = cpu.size().iter().map(|&s| s as usize).collect();
        owned.push((name.to_string(), dtype, shape, bytes));
    }
    let views = owned
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidArgument(format!("cannot serialise tensors: {e}")))?;
    safetensors::serialize(views, None)
        .map_err(|e| Error::InvalidArgument(format!("cannot serialise tensors: {e}")))
}

/// Writes `tensors` to `path` as safetensors, atomically (temporary file, then rename).
pub fn write_safetensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    crate::io::atomic::write_atomic(path, &safetensors_bytes(tensors)?)
}

/// Reads every tensor of one safetensors file onto the CPU, as stored.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and dropped before this function returns;
    // every tensor is copied out of it.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| Error::malformed(path, format!("not a safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            Error::malformed(
                path,
                format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
            )
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        out.insert(name, tensor);
    }
    Ok(out)
}

/// Reads all shards of a model folder into one bag.
pub fn read_checkpoint(dir: &Path) -> Result<TensorBag> {
    let mut all = HashMap::new();
    for file in checkpoint_files(dir)? {
        all.extend(read_safetensors(&file)?);
    }
    Ok(TensorBag::new(all, dir.display().to_string()))
}
