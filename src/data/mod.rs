//! Data: corpus readers, tokenization and packing, harvesting activations
//! into the on-disk store, and serving them back as shuffled batches.
//!
//! - `store/`: the activation store (manifest, shards, row sums, reader);
//! - `harvest/`: the harvest job, its pipeline threads, and streaming sources.
//!
//! Knows the model only through its public API (`load_model`,
//! `run_with_cache`); never its internals. May import `io`, `dist` (ranks
//! harvesting one store), `model`, `hooks`.

pub mod corpus;
pub mod harvest;
pub mod packing;
pub mod share;
pub mod source;
pub mod store;

pub use corpus::{Corpus, Document, DEFAULT_CORPUS};
pub use harvest::ranks::harvest_as_rank;
pub use harvest::stream::StreamingSource;
pub use harvest::{harvest, harvest_part, HarvestConfig, HarvestObserver, HarvestSummary, Silent};
pub use packing::{PackConfig, Packer, Window};
pub use share::Share;
pub use source::{ActivationBatch, ActivationSource};
pub use store::manifest::{Manifest, StoreDtype};
pub use store::reader::{ReaderConfig, StoreReader};
pub use store::{find_stores, Store, StoreWriter};
