//! Data: corpus readers, tokenization and packing, harvesting activations
//! into the on-disk store, and serving them back as shuffled batches.
//!
//! Knows the model only through its public API (`load_model`, `forward`,
//! hook caches); never its internals.

pub mod corpus;
pub mod harvest;
pub mod hub;
pub mod manifest;
pub mod packing;
mod pipeline;
pub mod reader;
mod row_sums;
mod shard_file;
pub mod source;
pub mod store;
pub mod stream;

pub use corpus::{Corpus, Document, DEFAULT_CORPUS};
pub use harvest::{harvest, HarvestConfig, HarvestObserver, HarvestSummary, Silent};
pub use manifest::{Manifest, StoreDtype};
pub use packing::{PackConfig, Packer, Window};
pub use reader::{ReaderConfig, StoreReader};
pub use source::{ActivationBatch, ActivationSource};
pub use store::{find_stores, Store, StoreWriter};
pub use stream::StreamingSource;
