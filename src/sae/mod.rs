//! Sparse autoencoders: one file per architecture behind a registry keyed by
//! SAELens's `architecture` string, encode/decode, SAELens and sparsify files,
//! and splicing an SAE into a forward pass.

pub mod architecture;
pub mod autoencoder;
pub mod auxk;
pub mod batchtopk;
pub mod config;
pub mod gated;
pub mod geometric_median;
pub mod io;
pub mod jumprelu;
pub mod registry;
pub mod splice;
pub mod standard;
pub mod topk;
pub mod topk_sparse;
pub mod weights;

pub use architecture::{Architecture, StepContext, StepOutput};
pub use autoencoder::Sae;
pub use config::SaeConfig;
pub use io::{load_sae, save_sae};
pub use registry::{architecture, ARCHITECTURES};
pub use splice::SaeSplice;
pub use weights::SaeWeights;
