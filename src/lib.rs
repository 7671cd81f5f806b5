//! saescope: sparse autoencoders and interventions on language models, on libtorch.
//!
//! Layers, top to bottom (see DESIGN.md): `model` (architectures, weights,
//! tokenizer, generation) → `hooks` (hook points and interventions) → `data`
//! (corpora, activation stores) → `sae` (architectures, files) → `train`
//! (the trainer) → `eval` (SAE metrics) → `label` (feature dictionaries) →
//! `steer` (interventions) → `serve` (the OpenAI-compatible server).

pub mod analysis;
pub mod bench;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod hooks;
pub mod io;
pub mod label;
pub mod machine;
pub mod model;
pub mod plots;
pub mod sae;
pub mod serve;
pub mod steer;
pub mod train;

pub use error::{Error, Result};
