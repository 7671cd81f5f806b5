//! Hook points and interventions: the one mechanism by which harvesting,
//! SAE splicing, steering and patching see and change a forward pass.

pub mod cache;
pub mod combine;
pub mod intervention;
pub mod names;
pub mod row_edit;

pub use cache::ActivationCache;
pub use combine::{Blend, Shared};
pub use intervention::{FnIntervention, ForSequences, HookContext, Hooks, Intervention};
pub use names::{BlockSite, HookPoint};
pub use row_edit::{
    BlockEdits, Computed, PlainProducts, ProductWeights, RowEdit, RowFunction, RowProducts,
};
