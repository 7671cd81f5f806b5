//! One file per SAE architecture (SAELens's `architecture` names), each an
//! [`crate::sae::Architecture`]: its encoder, its loss and hand-written
//! gradients, and the tensors and file quirks it owns. `auxk` is the auxiliary
//! dead-latent loss the TopK family shares; `topk_sparse` the TopK step that
//! touches only the k active latents.

pub mod auxk;
pub mod batchtopk;
pub mod gated;
pub mod jumprelu;
pub mod standard;
pub mod topk;
pub mod topk_sparse;
