//! One harvest by the ranks of a job: rank `r` of `n` stores shards `r`,
//! `r + n`, … of the harvest (each rank tokenizes the whole stream but runs
//! the model only on its own shards' windows) as its part of each store;
//! once every rank has finished, rank 0 merges the parts' manifests into the
//! store's `manifest.json`. The merged store holds exactly the shards a
//! single process would write, under other file names. Each rank resumes
//! from its own part.

use tch::Tensor;

use super::config::{store_dir, HarvestConfig, HarvestObserver, HarvestSummary};
use super::harvest_part;
use crate::data::share::Share;
use crate::data::store::parts::merge_parts;
use crate::dist::ProcessGroup;
use crate::error::{Error, Result};
use crate::model::LoadedModel;

/// This rank's part of the harvest, then (rank 0) the merge. Every rank
/// learns whether every other one succeeded before anything is merged, so
/// a failed rank makes the job fail everywhere rather than wait. Rank 0's
/// summary describes the merged stores (shards and rows kept from before
/// summed over the ranks, the slowest rank's forward seconds); the others',
/// their own part.
pub fn harvest_as_rank(
    model: &LoadedModel,
    cfg: &HarvestConfig,
    group: &ProcessGroup,
    observer: &mut dyn HarvestObserver,
) -> Result<HarvestSummary> {
    let (rank, world) = (group.rank(), group.world_size());
    let part = Share::new(rank, world)?;
    let own = harvest_part(model, cfg, Some(part), observer);
    // Every rank's [succeeded, kept shards, kept rows, forward seconds].
    let facts = match &own {
        Ok(s) => [
            1.0,
            s.kept_shards as f64,
            s.kept_rows as f64,
            s.forward_secs,
        ],
        Err(_) => [0.0; 4],
    };
    let reports = group.all_gather(&Tensor::from_slice(&facts))?;
    let reports: Vec<Vec<f64>> = reports
        .iter()
        .map(Vec::<f64>::try_from)
        .collect::<std::result::Result<_, _>>()?;
    let own = own?;
    if let Some(failed) = reports.iter().position(|r| r[0] != 1.0) {
        return Err(Error::Distributed(format!(
            "rank {failed} failed its part of the harvest (its own output says why); \
             rerun with --resume"
        )));
    }
    let merged = if rank == 0 {
        merge_all(cfg, world).map(|mut m| {
            m.kept_shards = reports.iter().map(|r| r[1] as usize).sum();
            m.kept_rows = reports.iter().map(|r| r[2] as u64).sum();
            m.forward_secs = reports.iter().map(|r| r[3]).fold(0.0, f64::max);
            m
        })
    } else {
        Ok(own.clone())
    };
    let merge_ok = agree(group, merged.is_ok())?;
    let merged = merged?;
    if !merge_ok[0] {
        return Err(Error::Distributed(
            "rank 0 could not merge the parts' manifests (its output says why)".into(),
        ));
    }
    Ok(merged)
}

/// Every rank's `ok`, in rank order.
fn agree(group: &ProcessGroup, ok: bool) -> Result<Vec<bool>> {
    let flags = group.all_gather(&Tensor::from_slice(&[i64::from(ok)]))?;
    flags
        .iter()
        .map(|f| Ok(f.f_int64_value(&[0])? == 1))
        .collect()
}

/// Merges every hook's store from its `world` parts.
fn merge_all(cfg: &HarvestConfig, world: usize) -> Result<HarvestSummary> {
    let mut stores = Vec::with_capacity(cfg.hooks.len());
    let mut first = None;
    for &hook in &cfg.hooks {
        let dir = store_dir(&cfg.out, &cfg.hooks, hook);
        let manifest = merge_parts(&dir, world)?;
        first.get_or_insert(manifest);
        stores.push(dir);
    }
    let m = first.ok_or_else(|| Error::InvalidArgument("no hook points to harvest".into()))?;
    Ok(HarvestSummary {
        stores,
        rows: m.tokens,
        windows: m.windows,
        shards: m.shards.len(),
        kept_shards: 0,
        kept_rows: 0,
        forward_secs: 0.0,
        corpus_exhausted: m.corpus_exhausted,
    })
}
