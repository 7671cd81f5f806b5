//! Architectures, weight loading (HF safetensors folders, hub ids, GGUF), the
//! tokenizer, the hooked forward pass with a KV cache, and generation.

pub mod attention;
pub mod chat;
pub mod config;
pub mod decode_step;
pub mod fused_ops;
pub mod gemv;
pub mod generate;
pub mod gguf;
pub mod gguf_load;
pub mod gguf_quant;
pub mod gguf_tokenizer;
pub mod hf_config;
pub mod hf_convert;
pub mod kv_cache;
pub mod linear;
pub mod load;
pub mod rotary;
pub mod safetensors_io;
pub mod sampling;
pub mod source;
pub mod team;
pub mod tokenizer;
pub mod torch_threads;
pub mod transformer;
pub mod weights;

pub use config::ModelConfig;
pub use generate::{generate, GenerateConfig};
pub use load::{load_model, parse_device, parse_dtype, LoadedModel};
pub use sampling::SamplingConfig;
pub use tokenizer::ModelTokenizer;
pub use transformer::{ForwardInput, LogitsFor, StopAt, Transformer};
