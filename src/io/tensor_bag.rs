//! Named tensors read from a file, from which a loader takes what it needs:
//! a missing tensor, or one of another shape than the config implies, is an
//! error naming it and the file. Loaders take tensors by shape before any
//! arithmetic on them (`cat`, `tr`, `reshape`), which would abort inside
//! libtorch on a crafted file.

use std::collections::HashMap;

use tch::Tensor;

use crate::error::{Error, Result};

/// A bag of named tensors read from a file, from which loaders take what they need.
pub struct TensorBag {
    tensors: HashMap<String, Tensor>,
    source_desc: String,
}

impl TensorBag {
    pub fn new(tensors: HashMap<String, Tensor>, source_desc: impl Into<String>) -> Self {
        TensorBag {
            tensors,
            source_desc: source_desc.into(),
        }
    }

    /// Removes and returns tensor `name`, or a [`Error::MissingTensor`].
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.tensors
            .remove(name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                source_desc: self.source_desc.clone(),
            })
    }

    /// Removes and returns tensor `name`, which must have shape `expected`
    /// (an [`Error::FileTensorShape`] naming the file and both shapes).
    pub fn take_shaped(&mut self, name: &str, expected: &[i64]) -> Result<Tensor> {
        let t = self.take(name)?;
        if t.size() != expected {
            return Err(Error::FileTensorShape {
                name: name.to_string(),
                source_desc: self.source_desc.clone(),
                expected: expected.to_vec(),
                got: t.size(),
            });
        }
        Ok(t)
    }

    /// [`take_shaped`](Self::take_shaped) when `wanted`, and nothing otherwise.
    pub fn take_shaped_if(
        &mut self,
        wanted: bool,
        name: &str,
        expected: &[i64],
    ) -> Result<Option<Tensor>> {
        if wanted {
            self.take_shaped(name, expected).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Removes and returns tensor `name` when present.
    pub fn take_opt(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Takes `name` when `wanted`, and requires it then.
    pub fn take_if(&mut self, wanted: bool, name: &str) -> Result<Option<Tensor>> {
        if wanted {
            self.take(name).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
