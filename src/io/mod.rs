//! File and randomness primitives every other layer builds on: atomic writes
//! and checksums, safetensors reading and writing, the Hugging Face hub cache
//! layout, and seeded random generators. Imports nothing else from the crate
//! but `error`.

pub mod atomic;
pub mod dtype;
pub mod hub;
pub mod names;
pub mod rng;
pub mod safetensors;
pub mod tensor_bag;
