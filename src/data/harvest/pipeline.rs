//! A harvest's pipeline: the forward passes on the calling thread, with two
//! threads beside them so that the model is rarely kept waiting: a packer that
//! tokenizes and packs windows ahead of the forwards, and a writer that
//! builds, hashes, writes and lists the shards behind them. Each talks to the
//! forward loop through a bounded channel, so memory stays bounded: a few
//! batches of windows ahead, about one shard of activations behind (plus the
//! shard being built).
//!
//! The windows, their batches and the shards come out exactly as a harvest
//! that does everything in turn would make them. A thread stops as soon as the
//! other end of its channel is gone, its error (a panic included) comes back
//! as the harvest's error, and an unfinished shard is never listed.

use std::any::Any;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::ScopedJoinHandle;

use tch::Tensor;

use super::config::{HarvestConfig, HarvestObserver, HarvestSummary};
use crate::data::packing::{windows_tensor, Packer, Window};
use crate::data::share::Share;
use crate::data::store::shard::ShardBuilder;
use crate::data::store::StoreWriter;
use crate::error::{Error, Result};
use crate::model::LoadedModel;

/// Batches of windows the packer may hold ready ahead of the forwards.
const BATCHES_AHEAD: usize = 4;

/// One forward batch of windows.
struct WindowBatch {
    /// Fewer than a batch only at the end of a shard or of the corpus; empty
    /// only when the corpus ended right at the end of the previous batch.
    windows: Vec<Window>,
    /// Windows planned for the shard the batch belongs to.
    shard_windows: u64,
    /// The last batch of its shard.
    ends_shard: bool,
    /// The corpus ran out: no batch follows.
    corpus_ended: bool,
}

/// Which windows the packer hands out, and how they are grouped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PackPlan {
    /// Windows already stored (the packer has skipped them).
    pub done_windows: u64,
    pub target_windows: u64,
    pub windows_per_shard: u64,
    /// Windows per forward batch.
    pub batch: usize,
    /// The part of a multi-rank harvest this is: only its shards (shard `i`
    /// belongs to part `i % count`) are packed, the others' windows skipped.
    pub part: Option<Share>,
    /// Shards of this part already stored (skipped like the others').
    pub part_done_shards: u64,
}

impl PackPlan {
    /// Windows this harvest stores in all, the ones stored before included.
    pub fn windows_to_store(&self) -> u64 {
        let Some(part) = self.part else {
            return self.target_windows;
        };
        let full = self.target_windows / self.windows_per_shard;
        let last = self.target_windows % self.windows_per_shard;
        part.count_of(full) * self.windows_per_shard + if part.holds(full) { last } else { 0 }
    }
}

/// The packer thread: sends the windows after `plan.done_windows` up to
/// `plan.target_windows`, shard by shard, each shard in batches of
/// `plan.batch` (the last batch of a shard may be short), until the target
/// or the end of the corpus. Stops quietly if the receiver is gone.
fn pack_windows(
    mut packer: Packer<'_>,
    plan: PackPlan,
    out: SyncSender<WindowBatch>,
) -> Result<()> {
    let mut done = plan.done_windows;
    let mut own_seen = 0;
    while done < plan.target_windows {
        let shard_windows = (plan.target_windows - done).min(plan.windows_per_shard);
        let shard = done / plan.windows_per_shard;
        let ours = plan.part.is_none_or(|p| p.holds(shard));
        if ours {
            own_seen += 1;
        }
        if !ours || own_seen <= plan.part_done_shards {
            // Another part's shard, or one of ours already stored.
            if packer.skip(shard_windows)? < shard_windows {
                let end = WindowBatch {
                    windows: Vec::new(),
                    shard_windows,
                    ends_shard: false,
                    corpus_ended: true,
                };
                let _ = out.send(end);
                return Ok(());
            }
            done += shard_windows;
            continue;
        }
        let mut in_shard = 0;
        while in_shard < shard_windows {
            let want = (shard_windows - in_shard).min(plan.batch as u64) as usize;
            let windows = packer.next_windows(want)?;
            let corpus_ended = windows.len() < want;
            in_shard += windows.len() as u64;
            let batch = WindowBatch {
                windows,
                shard_windows,
                ends_shard: corpus_ended || in_shard == shard_windows,
                corpus_ended,
            };
            if out.send(batch).is_err() || corpus_ended {
                return Ok(());
            }
        }
        done += shard_windows;
    }
    Ok(())
}

/// What the forward loop sends the writer.
enum ToWriter {
    /// A shard of `rows` rows starts.
    Begin { rows: usize },
    /// The rows of one forward batch: per store `[n, d]` on the CPU in the
    /// store's dtype, with their token ids and positions.
    Rows {
        acts: Vec<Tensor>,
        tokens: Vec<i32>,
        positions: Vec<i32>,
    },
    /// The shard is complete: it holds `windows` windows from `first_window`.
    End { first_window: u64, windows: u64 },
}

/// Shard `index` of every store is written and listed in its manifest,
/// both synced to disk.
#[derive(Debug, Clone, Copy)]
struct Written {
    index: usize,
    rows: u64,
}

/// Messages the writer may hold queued: one shard's batches and its
/// beginning and end, at least two.
fn writer_queue(windows_per_shard: u64, batch: usize) -> usize {
    (windows_per_shard.div_ceil(batch as u64) as usize).max(1) + 2
}

/// The writer thread: opens the stores with `open` (which may take a while:
/// a new store's manifest needs the model's sha256), then builds the shards
/// it is sent, shard `i` of each store in turn, and reports each one to
/// `written` once it and its manifest are on disk. When `input` closes, a
/// shard still in progress is dropped, its temporary files removed. Returns
/// the stores, to be finished by the caller.
fn write_shards(
    open: impl FnOnce() -> Result<Vec<StoreWriter>>,
    input: Receiver<ToWriter>,
    written: Sender<Written>,
) -> Result<Vec<StoreWriter>> {
    let mut writers = open()?;
    let mut builders: Vec<ShardBuilder> = writers
        .iter()
        .map(|w| ShardBuilder::new(w.manifest().dtype, w.manifest().d))
        .collect();
    for message in input {
        match message {
            ToWriter::Begin { rows } => {
                for (writer, builder) in writers.iter().zip(&mut builders) {
                    builder.start(&writer.next_shard_path(), rows)?;
                }
            }
            ToWriter::Rows {
                acts,
                tokens,
                positions,
            } => {
                if acts.len() != builders.len() {
                    return Err(Error::InvalidArgument(format!(
                        "rows for {} stores sent to a writer of {}",
                        acts.len(),
                        builders.len()
                    )));
                }
                for (builder, acts) in builders.iter_mut().zip(&acts) {
                    builder.push(acts, &tokens, &positions)?;
                }
            }
            ToWriter::End {
                first_window,
                windows,
            } => {
                let index = writers.first().map_or(0, |w| w.manifest().shards.len());
                let mut rows = 0;
                for (writer, builder) in writers.iter_mut().zip(&mut builders) {
                    let built = builder.finish()?;
                    rows = built.rows;
                    writer.commit(built, first_window, windows)?;
                }
                // The forward loop may be gone already; the shard is listed anyway.
                let _ = written.send(Written { index, rows });
            }
        }
    }
    Ok(writers)
}

/// The result of a scoped thread, a panic turned into the error `panicked`
/// makes of its message.
fn joined<T>(
    handle: ScopedJoinHandle<'_, Result<T>>,
    panicked: impl FnOnce(String) -> Error,
) -> Result<T> {
    handle
        .join()
        .unwrap_or_else(|payload| Err(panicked(panic_message(payload.as_ref()))))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// A harvest ready to run: its packer positioned after the windows already
/// stored.
pub(crate) struct Job<'a> {
    pub model: &'a LoadedModel,
    pub cfg: &'a HarvestConfig,
    pub packer: Packer<'a>,
    pub plan: PackPlan,
    /// Leading positions of each window left out of the store (0 or 1).
    pub skip: usize,
    /// Shards and rows already stored.
    pub kept_shards: usize,
    pub kept_rows: u64,
}

/// Why the forward loop stopped early.
enum Stop {
    Failed(Error),
    /// The writer is gone: its own result says why.
    WriterGone,
}

/// The kept rows of one forward batch, for every hook.
struct BatchRows {
    /// Per hook, `[rows, d]` on the CPU in the store's dtype.
    acts: Vec<Tensor>,
    tokens: Vec<i32>,
    positions: Vec<i32>,
    forward_secs: f64,
}

impl Job<'_> {
    /// Runs the forwards with the packer and the writer beside them, then
    /// marks the stores complete. `open` opens the stores, on the writer's
    /// thread.
    pub(crate) fn run(
        self,
        open: impl FnOnce() -> Result<Vec<StoreWriter>> + Send,
        observer: &mut dyn HarvestObserver,
    ) -> Result<HarvestSummary> {
        let Job {
            model,
            cfg,
            packer,
            plan,
            skip,
            kept_shards,
            kept_rows,
        } = self;
        let forwards = Forwards { model, cfg, skip };
        observer.started(
            plan.windows_to_store() * forwards.rows_per_window(),
            kept_rows,
        );
        let (looped, writers, packed, written) = std::thread::scope(|s| {
            let (window_tx, windows) = sync_channel(BATCHES_AHEAD);
            let (to_writer, writer_input) =
                sync_channel(writer_queue(plan.windows_per_shard, plan.batch));
            let (written_tx, written) = channel();
            let packing = s.spawn(move || pack_windows(packer, plan, window_tx));
            let writing = s.spawn(move || write_shards(open, writer_input, written_tx));
            let looped = forwards.run(&windows, &to_writer, &written, observer);
            // Closing the channels stops both threads; a shard left
            // unfinished is dropped by the writer.
            drop(windows);
            drop(to_writer);
            let writers = joined(writing, |m| {
                Error::store(&cfg.out, format!("the shard writer panicked: {m}"))
            });
            let packed = joined(packing, |m| {
                Error::Tokenizer(format!("the window packer panicked: {m}"))
            });
            (looped, writers, packed, written)
        });
        for w in written.try_iter() {
            observer.shard_written(w.index, w.rows);
        }
        let (forward_secs, exhausted) = match looped {
            Ok(done) => done,
            Err(Stop::Failed(e)) => return Err(e),
            Err(Stop::WriterGone) => {
                writers?;
                return Err(Error::store(&cfg.out, "the shard writer stopped early"));
            }
        };
        let mut writers = writers?;
        packed?;
        for w in &mut writers {
            w.finish(exhausted)?;
        }
        let m = writers[0].manifest();
        Ok(HarvestSummary {
            stores: writers.iter().map(|w| w.dir().to_path_buf()).collect(),
            rows: m.tokens,
            windows: m.windows,
            shards: m.shards.len(),
            kept_shards,
            kept_rows,
            forward_secs,
            corpus_exhausted: exhausted,
        })
    }
}

/// The forward passes of a harvest.
struct Forwards<'a> {
    model: &'a LoadedModel,
    cfg: &'a HarvestConfig,
    skip: usize,
}

impl Forwards<'_> {
    fn rows_per_window(&self) -> u64 {
        (self.cfg.context - self.skip) as u64
    }

    /// Each batch from the packer through the model, its rows to the writer.
    /// Returns the seconds spent in forwards and whether the corpus ran out.
    fn run(
        &self,
        windows: &Receiver<WindowBatch>,
        to_writer: &SyncSender<ToWriter>,
        written: &Receiver<Written>,
        observer: &mut dyn HarvestObserver,
    ) -> std::result::Result<(f64, bool), Stop> {
        let send = |message| to_writer.send(message).map_err(|_| Stop::WriterGone);
        let mut forward_secs = 0.0;
        let mut shard_first = 0;
        let mut in_shard = 0;
        // The packer's channel closes after its last batch (or on its error,
        // which its result reports).
        for batch in windows.iter() {
            if let Some(first) = batch.windows.first() {
                if in_shard == 0 {
                    shard_first = first.index;
                    send(ToWriter::Begin {
                        rows: (batch.shard_windows * self.rows_per_window()) as usize,
                    })?;
                }
                let rows = self.forward(&batch.windows).map_err(Stop::Failed)?;
                forward_secs += rows.forward_secs;
                let n = rows.tokens.len() as u64;
                send(ToWriter::Rows {
                    acts: rows.acts,
                    tokens: rows.tokens,
                    positions: rows.positions,
                })?;
                in_shard += batch.windows.len() as u64;
                observer.advanced(n);
            }
            if batch.ends_shard && in_shard > 0 {
                send(ToWriter::End {
                    first_window: shard_first,
                    windows: in_shard,
                })?;
                in_shard = 0;
            }
            for w in written.try_iter() {
                observer.shard_written(w.index, w.rows);
            }
            if batch.corpus_ended {
                return Ok((forward_secs, true));
            }
        }
        Ok((forward_secs, false))
    }

    /// Runs one batch of windows through the model and gathers the kept rows.
    fn forward(&self, batch: &[Window]) -> Result<BatchRows> {
        let (cfg, skip) = (self.cfg, self.skip);
        let device = self.model.model.device();
        let input = windows_tensor(batch, device)?;
        let started = std::time::Instant::now();
        let acts = self.model.model.hook_rows(&input, &cfg.hooks)?;
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let forward_secs = started.elapsed().as_secs_f64();
        let acts = acts
            .iter()
            .map(|act| -> Result<Tensor> {
                // [batch, context, d] -> [batch * (context - skip), d]
                let kept = act.f_narrow(1, skip as i64, (cfg.context - skip) as i64)?;
                let d = kept.size()[2];
                Ok(kept
                    .f_reshape([-1, d])?
                    .f_to_kind(cfg.dtype.kind())?
                    .f_to_device(tch::Device::Cpu)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut tokens = Vec::with_capacity(batch.len() * (cfg.context - skip));
        let mut positions = Vec::with_capacity(tokens.capacity());
        for w in batch {
            for (pos, &id) in w.tokens.iter().enumerate().skip(skip) {
                tokens.push(
                    i32::try_from(id)
                        .map_err(|_| Error::Tokenizer(format!("token id {id} exceeds int32")))?,
                );
                positions.push(pos as i32);
            }
        }
        Ok(BatchRows {
            acts,
            tokens,
            positions,
            forward_secs,
        })
    }
}
