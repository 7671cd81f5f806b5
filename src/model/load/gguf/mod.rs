//! GGUF files (llama.cpp's format): the container (`file`), its header and
//! metadata values (`header`, `value`),
//! dequantisation of the block formats (`quant`), the tokenizer rebuilt from
//! the metadata (`tokenizer`), and the config and weights of a model (`load`).

pub mod file;
mod header;
pub mod load;
pub mod quant;
pub mod tokenizer;
mod value;

#[cfg(test)]
mod mutation_tests;
