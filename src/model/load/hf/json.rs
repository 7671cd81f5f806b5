//! Reading fields of a Hugging Face `config.json` with messages that name
//! the missing key, and the rope settings in both the transformers 4 keys
//! (`rope_theta`, `rope_scaling`, `rotary_pct`) and the transformers 5
//! `rope_parameters` object.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::Llama3RopeScaling;

pub(super) fn int(json: &Value, key: &str) -> Result<i64> {
    json.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::Config(format!("config.json: missing integer `{key}`")))
}

pub(super) fn int_or(json: &Value, key: &str, default: i64) -> i64 {
    json.get(key).and_then(Value::as_i64).unwrap_or(default)
}

pub(super) fn float_or(json: &Value, key: &str, default: f64) -> f64 {
    json.get(key).and_then(Value::as_f64).unwrap_or(default)
}

pub(super) fn bool_or(json: &Value, key: &str, default: bool) -> bool {
    json.get(key).and_then(Value::as_bool).unwrap_or(default)
}

pub(super) fn layers(json: &Value, key: &str) -> Result<usize> {
    usize::try_from(int(json, key)?).map_err(|_| Error::Config(format!("`{key}` is negative")))
}

/// `eos_token_id` may be a number or a list of numbers.
pub(super) fn eos_ids(json: &Value) -> Vec<i64> {
    match json.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

/// The rope section: transformers 5 nests it in `rope_parameters`.
pub(super) fn rope_section(json: &Value) -> &Value {
    json.get("rope_parameters")
        .filter(|v| v.is_object())
        .or_else(|| json.get("rope_scaling").filter(|v| v.is_object()))
        .unwrap_or(json)
}

pub(super) fn rope_theta(json: &Value, default: f64) -> f64 {
    let section = rope_section(json);
    section
        .get("rope_theta")
        .and_then(Value::as_f64)
        .or_else(|| json.get("rope_theta").and_then(Value::as_f64))
        .unwrap_or(default)
}

pub(super) fn llama3_scaling(json: &Value) -> Result<Option<Llama3RopeScaling>> {
    let section = rope_section(json);
    let kind = section
        .get("rope_type")
        .or_else(|| section.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => Ok(Some(Llama3RopeScaling {
            factor: float_or(section, "factor", 8.0),
            low_freq_factor: float_or(section, "low_freq_factor", 1.0),
            high_freq_factor: float_or(section, "high_freq_factor", 4.0),
            original_max_position_embeddings: float_or(
                section,
                "original_max_position_embeddings",
                8192.0,
            ),
        })),
        other => Err(Error::Config(format!("unsupported rope_type `{other}`"))),
    }
}
