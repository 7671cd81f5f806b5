//! How the ranks of a job divide a training run. Each rank reads its own
//! shares of the data (`data.read_shares`, see [`held_shares`]); then either
//!
//! - **data parallel** (the default): every rank trains every SAE on its rows
//!   and the steps are reduced over the ranks (`step`), or
//! - **module distribution** (`run.distribute_modules`): each SAE belongs to
//!   one rank ([`owner_of`]), and each hook's rows go to the ranks that own
//!   an SAE on it ([`Exchange::rows_for_owners`]), by all-to-all, or to every
//!   rank by all-gather as sparsify does; each rank then trains its SAEs on
//!   the whole batch.
//!
//! Either way the ranks together take the step one process would take on the
//! batch made of all the shares in order.

use std::rc::Rc;

use tch::{Kind, Tensor};

use super::checkpoint::{checkpoint_dir, read_checkpoint_state};
use super::config::{ModuleExchange, TrainConfig};
use crate::data::share::Share;
use crate::dist::ProcessGroup;
use crate::error::{Error, Result};
use crate::model::DeviceSpec;

/// The data shares rank `rank` of `world` reads: `rank`, `rank + world`, …
/// of `read_shares`.
pub fn held_shares(read_shares: usize, world: usize, rank: usize) -> Result<Vec<Share>> {
    if read_shares < world {
        return Err(Error::Training(format!(
            "the data is read in {read_shares} share(s), fewer than the job's {world} ranks; \
             resume with at most {read_shares} ranks (a checkpoint keeps its shares) or start anew"
        )));
    }
    (rank..read_shares)
        .step_by(world.max(1))
        .map(|index| Share::new(index, read_shares))
        .collect()
}

/// `data.read_shares` resolved: a resumed run's checkpoint decides (and a
/// different explicit value is refused); else the config's, or one share
/// per rank.
pub fn resolve_read_shares(cfg: &TrainConfig, world: usize, resume: bool) -> Result<usize> {
    let asked = cfg.data.read_shares;
    if resume {
        if let Some(state) = read_checkpoint_state(&checkpoint_dir(&cfg.run.out))? {
            if asked != 0 && asked != state.read_shares {
                return Err(Error::Training(format!(
                    "the checkpoint read its data in {} share(s); --read-shares {asked} would change the data",
                    state.read_shares
                )));
            }
            return Ok(state.read_shares);
        }
    }
    Ok(if asked == 0 { world } else { asked })
}

/// `cfg` with its CUDA devices moved to this local rank's own GPUs, as
/// PyTorch jobs give rank `LOCAL_RANK` device `cuda:LOCAL_RANK`: with `g`
/// distinct CUDA devices named, `cuda:i` becomes `cuda:(i + local_rank·g)`.
/// Left as it is when the machine shows too few GPUs for that (a launcher
/// that gives each rank its own `CUDA_VISIBLE_DEVICES`).
pub fn place_for_local_rank(cfg: &TrainConfig, local_rank: usize, visible: usize) -> TrainConfig {
    let mut named: Vec<usize> = cfg
        .saes
        .iter()
        .map(|s| s.device)
        .chain(std::iter::once(cfg.data.model_device))
        .filter_map(|d| match d {
            DeviceSpec::Cuda { index, .. } => Some(index),
            DeviceSpec::Cpu => None,
        })
        .collect();
    named.sort_unstable();
    named.dedup();
    let highest = named.last().copied().unwrap_or(0);
    let shift = local_rank * named.len();
    let mut out = cfg.clone();
    if named.is_empty() || highest + shift >= visible {
        return out;
    }
    let moved = |d: &mut DeviceSpec| {
        if let DeviceSpec::Cuda { index, .. } = d {
            *d = DeviceSpec::Cuda {
                index: *index + shift,
                explicit: true,
            };
        }
    };
    out.saes.iter_mut().for_each(|s| moved(&mut s.device));
    moved(&mut out.data.model_device);
    out
}

/// The CUDA device the first SAE on a GPU trains on: where an NCCL group
/// of this rank runs.
pub fn first_cuda_device(cfg: &TrainConfig) -> Option<usize> {
    cfg.saes.iter().find_map(|s| match s.device {
        DeviceSpec::Cuda { index, .. } => Some(index),
        DeviceSpec::Cpu => None,
    })
}

/// The rank that trains SAE `index` of `n` under module distribution:
/// consecutive SAEs per rank, as even as the count allows.
pub fn owner_of(index: usize, n: usize, world: usize) -> usize {
    index * world / n.max(1)
}

/// How this process takes part in a run.
pub(super) enum Role {
    Alone,
    DataParallel(Rc<ProcessGroup>),
    Modules(Exchange),
}

impl Role {
    pub(super) fn new(cfg: &TrainConfig, group: Option<Rc<ProcessGroup>>) -> Result<Role> {
        let Some(group) = group else {
            return Ok(Role::Alone);
        };
        if !cfg.run.distribute_modules {
            return Ok(Role::DataParallel(group));
        }
        let (world, n) = (group.world_size(), cfg.saes.len());
        if n < world {
            return Err(Error::Training(format!(
                "module distribution spreads SAEs over ranks: {n} SAE(s) cannot occupy {world} ranks"
            )));
        }
        let hooks = cfg.hooks();
        let mut needs = vec![vec![false; hooks.len()]; world];
        for (i, spec) in cfg.saes.iter().enumerate() {
            let hook = hooks.iter().position(|h| *h == spec.hook).unwrap_or(0);
            needs[owner_of(i, n, world)][hook] = true;
        }
        Ok(Role::Modules(Exchange {
            group,
            scheme: cfg.run.module_exchange,
            needs,
            bytes_sent: 0,
        }))
    }

    pub(super) fn group(&self) -> Option<&ProcessGroup> {
        match self {
            Role::Alone => None,
            Role::DataParallel(g) => Some(g),
            Role::Modules(e) => Some(&e.group),
        }
    }

    /// Whether this process trains SAE `index` of `n`.
    pub(super) fn trains(&self, index: usize, n: usize) -> bool {
        match self {
            Role::Modules(e) => owner_of(index, n, e.group.world_size()) == e.group.rank(),
            _ => true,
        }
    }

    /// Whether this process writes files for the run as a whole (config,
    /// checkpoint state, run manifest): rank 0.
    pub(super) fn leads(&self) -> bool {
        self.group().is_none_or(|g| g.rank() == 0)
    }

    /// Whether this process writes its SAEs' folders, metrics and
    /// checkpoint tensors: every rank for its own SAEs under module
    /// distribution, rank 0 alone under data parallelism.
    pub(super) fn writes_saes(&self) -> bool {
        matches!(self, Role::Modules(_)) || self.leads()
    }

    /// The group the steps are reduced over (data parallel only).
    pub(super) fn step_group(&self) -> Option<&ProcessGroup> {
        match self {
            Role::DataParallel(g) => Some(g),
            _ => None,
        }
    }

    /// Rows each rank holds this step (one all-gather of a count).
    pub(super) fn rows_per_rank(&self, local_rows: i64) -> Result<Vec<i64>> {
        match self.group() {
            None => Ok(vec![local_rows]),
            Some(g) => {
                let counts = g.all_gather(&Tensor::from_slice(&[local_rows]))?;
                counts.iter().map(|c| Ok(c.f_int64_value(&[0])?)).collect()
            }
        }
    }

    /// The rows this process trains on: its own (alone, data parallel) or,
    /// under module distribution, every rank's rows of the hooks its SAEs
    /// need (empty `[0, d]` for the others).
    pub(super) fn training_rows(
        &mut self,
        local: Vec<Tensor>,
        counts: &[i64],
    ) -> Result<Vec<Tensor>> {
        match self {
            Role::Modules(e) => e.rows_for_owners(&local, counts),
            _ => Ok(local),
        }
    }

    /// Every rank's rows of the batch, in rank order, on every rank: what a
    /// fresh run initialises from (input scale, `b_dec`).
    pub(super) fn whole_batch(&self, local: &[Tensor], counts: &[i64]) -> Result<Vec<Tensor>> {
        match self.group() {
            None => Ok(local.iter().map(Tensor::shallow_clone).collect()),
            Some(g) => Ok(all_gather_rows(g, local, counts)?.0),
        }
    }

    /// Bytes this rank has sent to other ranks to move rows (module distribution).
    pub(super) fn bytes_sent(&self) -> u64 {
        match self {
            Role::Modules(e) => e.bytes_sent,
            _ => 0,
        }
    }
}

/// The rows of module distribution in motion.
pub(super) struct Exchange {
    group: Rc<ProcessGroup>,
    scheme: ModuleExchange,
    /// `needs[rank][hook]`: whether the rank owns an SAE on the hook.
    needs: Vec<Vec<bool>>,
    bytes_sent: u64,
}

impl Exchange {
    /// Per hook, all ranks' rows (in rank order) where this rank needs them,
    /// else an empty `[0, d]` tensor. `local`: this rank's `[rows, d]` per
    /// hook; `counts`: every rank's rows.
    fn rows_for_owners(&mut self, local: &[Tensor], counts: &[i64]) -> Result<Vec<Tensor>> {
        let (rank, world) = (self.group.rank(), self.group.world_size());
        let widths: Vec<i64> = local.iter().map(|t| t.size()[1]).collect();
        let mine = &self.needs[rank];
        if self.scheme == ModuleExchange::AllGather {
            let (whole, sent) = all_gather_rows(&self.group, local, counts)?;
            self.bytes_sent += sent;
            return whole
                .into_iter()
                .zip(mine)
                .zip(&widths)
                .map(|((t, &needed), &d)| {
                    if needed {
                        Ok(t)
                    } else {
                        Ok(Tensor::f_zeros([0, d], (Kind::Float, tch::Device::Cpu))?)
                    }
                })
                .collect();
        }
        // One flat f32 buffer: for each destination, its hooks' rows in hook order.
        let rows = counts[rank];
        let mut pieces = Vec::new();
        let mut send = vec![0i64; world];
        for (dest, needs) in self.needs.iter().enumerate() {
            for (hook, _) in needs.iter().enumerate().filter(|(_, &n)| n) {
                pieces.push(
                    local[hook]
                        .f_to_kind(Kind::Float)?
                        .f_contiguous()?
                        .f_view([-1])?,
                );
                send[dest] += rows * widths[hook];
            }
        }
        let input = if pieces.is_empty() {
            Tensor::f_zeros([0], (Kind::Float, tch::Device::Cpu))?
        } else {
            Tensor::f_cat(&pieces, 0)?
        };
        let needed_width: i64 = (0..widths.len())
            .filter(|&h| mine[h])
            .map(|h| widths[h])
            .sum();
        let recv: Vec<i64> = counts.iter().map(|&c| c * needed_width).collect();
        let received = self.group.all_to_all(&input, &send, &recv)?;
        self.bytes_sent += 4 * (send.iter().sum::<i64>() - send[rank]) as u64;
        // Unpack: from each source rank, its rows of each needed hook.
        let mut per_hook: Vec<Vec<Tensor>> = (0..widths.len()).map(|_| Vec::new()).collect();
        let mut offset = 0;
        for &count in counts {
            for hook in (0..widths.len()).filter(|&h| mine[h]) {
                let len = count * widths[hook];
                per_hook[hook].push(
                    received
                        .f_narrow(0, offset, len)?
                        .f_view([count, widths[hook]])?,
                );
                offset += len;
            }
        }
        per_hook
            .into_iter()
            .zip(&widths)
            .map(|(parts, &d)| {
                if parts.is_empty() {
                    Ok(Tensor::f_zeros([0, d], (Kind::Float, tch::Device::Cpu))?)
                } else {
                    Ok(Tensor::f_cat(&parts, 0)?)
                }
            })
            .collect()
    }
}

/// Every rank's rows of every hook, in rank order, and the bytes this rank
/// sent: each hook's rows padded to the largest count and all-gathered.
fn all_gather_rows(
    group: &ProcessGroup,
    local: &[Tensor],
    counts: &[i64],
) -> Result<(Vec<Tensor>, u64)> {
    let most = counts.iter().copied().max().unwrap_or(0);
    let mut out = Vec::with_capacity(local.len());
    let mut sent = 0u64;
    for t in local {
        let (rows, d) = (t.size()[0], t.size()[1]);
        let padded = t
            .f_to_kind(Kind::Float)?
            .f_constant_pad_nd([0, 0, 0, most - rows].as_slice())?
            .f_contiguous()?;
        let gathered = group.all_gather(&padded)?;
        sent += 4 * (most * d) as u64 * (group.world_size() as u64 - 1);
        let parts = gathered
            .iter()
            .zip(counts)
            .map(|(g, &c)| g.f_narrow(0, 0, c))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        out.push(Tensor::f_cat(&parts, 0)?);
    }
    Ok((out, sent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::SaeSpec;

    fn cuda(index: usize) -> DeviceSpec {
        DeviceSpec::Cuda {
            index,
            explicit: true,
        }
    }

    #[test]
    fn local_ranks_get_their_own_gpus_and_shares() {
        let cfg = TrainConfig {
            saes: vec![
                SaeSpec {
                    device: cuda(0),
                    ..SaeSpec::default()
                },
                SaeSpec {
                    device: cuda(1),
                    ..SaeSpec::default()
                },
            ],
            ..TrainConfig::default()
        };
        // Two GPUs named, rank 1 of a machine with 4: cuda:2 and cuda:3.
        let placed = place_for_local_rank(&cfg, 1, 4);
        let devices: Vec<DeviceSpec> = placed.saes.iter().map(|s| s.device).collect();
        assert_eq!(devices, [cuda(2), cuda(3)]);
        assert_eq!(first_cuda_device(&placed), Some(2));
        // Too few GPUs visible (one per rank already): left alone.
        assert_eq!(place_for_local_rank(&cfg, 1, 2), cfg);
        // Shares: rank 1 of 2 reads shares 1 and 3 of 4.
        let held = held_shares(4, 2, 1).unwrap();
        assert_eq!(held.iter().map(|s| s.index).collect::<Vec<_>>(), [1, 3]);
        assert!(held_shares(2, 3, 0).is_err());
        // Module distribution: 5 SAEs over 2 ranks, consecutive and balanced.
        let owners: Vec<usize> = (0..5).map(|i| owner_of(i, 5, 2)).collect();
        assert_eq!(owners, [0, 0, 0, 1, 1]);
    }
}
