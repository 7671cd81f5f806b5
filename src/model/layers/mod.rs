//! The libtorch building blocks of a block: attention (pattern, masks, the
//! fused and batched-matmul kernels), rotary position embeddings and linear
//! layers. They know the model's config and nothing about hooks or loading.

pub mod attention;
pub mod linear;
pub mod rotary;
