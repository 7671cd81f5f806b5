//! GGUF files (llama.cpp's format): the container and its metadata (`file`),
//! dequantisation of the block formats (`quant`), the tokenizer rebuilt from
//! the metadata (`tokenizer`), and the config and weights of a model (`load`).

pub mod file;
pub mod load;
pub mod quant;
pub mod tokenizer;
