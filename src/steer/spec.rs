//! The on-disk types of intervention files: a JSON document listing
//! interventions, each a `kind` and that kind's own fields, and (beside it,
//! same stem) a safetensors file with their tensors named `{index}.{name}`.
//! Which fields a kind has is the kind's business (see `kinds/`); this file
//! only knows the envelope.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const FORMAT_VERSION: u32 = 1;

/// One intervention as written in the JSON file: `{"kind": ..., <fields>}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteerSpec {
    /// The registry name of the kind, e.g. `activation_scaling`.
    pub kind: String,
    /// The kind's own fields, parsed by the kind.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl SteerSpec {
    /// The spec of `kind` with the fields of `params` (a struct that
    /// serialises to a JSON object).
    pub fn new<P: Serialize>(kind: &str, params: &P) -> Result<Self> {
        match serde_json::to_value(params)? {
            serde_json::Value::Object(fields) => Ok(SteerSpec {
                kind: kind.to_string(),
                fields,
            }),
            other => Err(Error::InvalidArgument(format!(
                "the parameters of a `{kind}` intervention serialise to {other}, not an object"
            ))),
        }
    }

    /// The fields parsed as the kind's parameter type.
    pub fn params<P: DeserializeOwned>(&self) -> std::result::Result<P, serde_json::Error> {
        serde_json::from_value(serde_json::Value::Object(self.fields.clone()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerFile {
    pub format_version: u32,
    /// The model the intervention was made for (informational).
    #[serde(default)]
    pub model: Option<String>,
    pub interventions: Vec<SteerSpec>,
}
