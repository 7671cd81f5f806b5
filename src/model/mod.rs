//! The language model: its config and weights, the one transformer that serves
//! every architecture (with hook points, a KV cache and `run_with_cache` in
//! `run.rs`), the
//! tokenizer, and generation.
//!
//! - `layers/`: attention, rotary embeddings, linear layers (libtorch math);
//! - `cpu/`: the fused CPU kernels, thread team and decode step;
//! - `load/`: model sources (file, folder, hub id) and the GGUF and HF formats;
//! - `generate/`: the generation loop, sampling and chat templates.
//!
//! May import `io`, `hooks` and `error`; nothing above (data, SAEs, training).

pub mod config;
pub mod cpu;
pub mod generate;
pub mod kv_cache;
pub mod layers;
pub mod load;
pub mod placement;
pub mod run;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use config::ModelConfig;
pub use generate::sampling::SamplingConfig;
pub use generate::{generate, GenerateConfig};
pub use load::{load_model, LoadedModel};
pub use placement::{parse_device, parse_dtype, ChosenDtype, DeviceSpec, Dtype, ModelDtype};
pub use run::CachedRun;
pub use tokenizer::ModelTokenizer;
pub use transformer::{ForwardInput, LogitsFor, StopAt, Transformer};
