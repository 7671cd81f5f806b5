//! Training SAEs: configs, the activation feed, Adam and schedules,
//! dead-latent tracking, checkpoints and metrics, and the trainer loop
//! that drives several SAEs from one stream, alone or as the ranks of a
//! job (`ranks`: data parallel or module distribution).

pub mod adam;
pub mod checkpoint;
pub mod config;
pub mod dead;
pub mod feed;
pub mod from_config;
pub mod metrics;
pub mod overrides;
pub mod ranks;
pub mod run_manifest;
pub mod schedule;
mod step;
pub mod trainer;

pub use config::{SaeSpec, TrainConfig};
pub use feed::{ActivationFeed, MemoryFeed, SharesFeed, StoreFeed, StreamFeed};
pub use from_config::train_from_config;
pub use trainer::{train, TrainObserver, TrainOptions, TrainSummary, TrainedSae};
