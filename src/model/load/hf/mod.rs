//! Hugging Face checkpoints: `config.json` mapped to [`crate::model::ModelConfig`]
//! and safetensors weights renamed into [`crate::model::weights::ModelWeights`],
//! one family module per architecture behind the registry in `families`.

pub mod config;
pub mod convert;
