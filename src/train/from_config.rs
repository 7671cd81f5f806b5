//! A whole training run from its config alone: the activations come from
//! the store named in `[data]`, or stream from the model over the corpus
//! when no store is given; each saved SAE's metadata names that source. In
//! a job, this rank reads only its shares of either (`ranks::held_shares`).

use super::config::TrainConfig;
use super::feed::{store_for_hook, ActivationFeed, SharesFeed, StoreFeed, StreamFeed};
use super::ranks::{held_shares, resolve_read_shares};
use super::trainer::{train, TrainObserver, TrainOptions, TrainSummary};
use crate::data::corpus::Corpus;
use crate::data::harvest::stream::StreamingSource;
use crate::data::store::Store;
use crate::error::Result;
use crate::hooks::HookPoint;
use crate::model::load_model;
use crate::sae::config::SaeMetadata;

/// Trains `cfg`'s SAEs (resuming from the checkpoint in `run.out` when
/// `resume`; data-parallel over `group`'s ranks when given), reporting to
/// `observer`.
pub fn train_from_config(
    cfg: &TrainConfig,
    resume: bool,
    group: Option<std::rc::Rc<crate::dist::ProcessGroup>>,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    let (world, rank) = group
        .as_ref()
        .map_or((1, 0), |g| (g.world_size(), g.rank()));
    let read_shares = resolve_read_shares(cfg, world, resume)?;
    let shares = held_shares(read_shares, world, rank)?;
    let batch_of = |share: &crate::data::Share| share.slice_of(cfg.data.batch_size).1;
    if shares.iter().any(|s| batch_of(s) == 0) {
        return Err(crate::error::Error::Training(format!(
            "a batch of {} rows cannot give each of {read_shares} data shares a row",
            cfg.data.batch_size
        )));
    }
    let mut opts = TrainOptions {
        resume,
        group,
        read_shares,
        ..TrainOptions::default()
    };
    let hooks = cfg.hooks();
    match &cfg.data.store {
        Some(root) => {
            let first = Store::open(&store_for_hook(root, &hooks[0])?)?;
            let m = first.manifest();
            opts.metadata = SaeMetadata {
                model_name: Some(m.model.spec.clone()),
                context_size: Some(m.context),
                prepend_bos: Some(true),
                dataset_path: Some(m.corpus.clone()),
                ..SaeMetadata::default()
            };
            let mut parts: Vec<Box<dyn ActivationFeed>> = Vec::new();
            for share in &shares {
                parts.push(Box::new(StoreFeed::open(
                    root,
                    &hooks,
                    batch_of(share),
                    cfg.data.seed,
                    cfg.data.buffer_shards,
                    *share,
                )?));
            }
            train(cfg, &mut SharesFeed::new(parts)?, &opts, observer)
        }
        None => {
            let device = cfg.data.model_device.resolve()?;
            let chosen = cfg.data.model_dtype.choose(device);
            if let Some(warning) = &chosen.slow_warning {
                observer.on_warning(warning);
            }
            let model = load_model(&cfg.data.model, device, chosen.dtype.kind())?;
            let n_layers = model.model.config().n_layers;
            let points = hooks
                .iter()
                .map(|h| HookPoint::parse_for(h, n_layers))
                .collect::<Result<Vec<_>>>()?;
            let corpus = Corpus::open(&cfg.data.corpus, &cfg.data.text_field)?;
            let mut parts: Vec<Box<dyn ActivationFeed + '_>> = Vec::new();
            for share in &shares {
                let source = StreamingSource::with_hooks(
                    &model,
                    &corpus,
                    &points,
                    cfg.data.context,
                    cfg.data.windows_per_forward,
                    cfg.data.skip_bos,
                    false,
                )?
                .with_share(*share);
                parts.push(Box::new(StreamFeed::new(source, batch_of(share))));
            }
            opts.metadata = SaeMetadata {
                model_name: Some(cfg.data.model.clone()),
                context_size: Some(cfg.data.context),
                prepend_bos: Some(true),
                dataset_path: Some(cfg.data.corpus.clone()),
                ..SaeMetadata::default()
            };
            let mut feed = SharesFeed::new(parts)?;
            train(cfg, &mut feed, &opts, observer)
        }
    }
}
