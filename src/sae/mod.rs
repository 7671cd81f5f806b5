//! Sparse autoencoders: the architecture trait and one file per architecture
//! under `arch/` behind a registry keyed by SAELens's `architecture` string,
//! encode/decode, SAELens and sparsify files, and splicing an SAE into a
//! forward pass. May import `io`, `hooks` and `error`; not `model` or `data`.

pub mod arch;
pub mod architecture;
pub mod autoencoder;
pub mod config;
pub mod geometric_median;
pub mod io;
pub mod registry;
pub mod splice;
pub mod weights;

pub use architecture::{Architecture, StepContext, StepOutput};
pub use autoencoder::Sae;
pub use config::SaeConfig;
pub use io::{load_sae, save_sae};
pub use registry::{architecture, SaeArchitecture, ARCHITECTURES};
pub use splice::SaeSplice;
pub use weights::SaeWeights;
