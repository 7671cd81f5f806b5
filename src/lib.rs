//! saescope: sparse autoencoders and interventions on language models, on libtorch.
//!
//! Layers, top to bottom (see DESIGN.md): `model` (architectures, weights,
//! tokenizer, generation) → `hooks` (hook points and interventions).

pub mod alloc_tuning;
pub mod bench;
pub mod data;
pub mod error;
pub mod hooks;
pub mod model;

pub use error::{Error, Result};
