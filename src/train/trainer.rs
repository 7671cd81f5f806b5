//! The training loop. One activation stream feeds every SAE of the run; each
//! SAE lives on its own device and takes one step (`step`) per batch. In a
//! job of several ranks each rank's feed serves its own shares of every
//! batch, and `ranks` decides what a rank trains on and writes.
//!
//! Checkpoints hold everything a step depends on (weights, Adam moments,
//! dead counters, the stream position as a step count), so a resumed run
//! repeats exactly what an uninterrupted one would have done.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::adam::{Adam, AdamConfig};
use super::checkpoint::{
    checkpoint_dir, commit_checkpoint, read_checkpoint, resume_key, take_like,
    write_checkpoint_tensors, CheckpointState, SaeCheckpoint,
};
use super::config::{
    training_bytes, ComputeDtype, InitBDec, InputNormalization, TrainConfig, SAVED_CONFIG_FILE,
};
use super::dead::DeadLatents;
use super::feed::ActivationFeed;
use super::metrics::{training_curves_svg, MetricsLog, StepRecord, METRICS_FILE};
use super::ranks::Role;
use super::run_manifest::write_run_manifest;
pub use super::step::learning_rate;
use super::step::{train_step, SaeRun};
use crate::dist::ProcessGroup;
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::machine::memory::ensure_fits;
use crate::plots::{histogram_svg, log10_densities};
use crate::sae::config::{SaeMetadata, NORMALIZE_NONE};
use crate::sae::geometric_median::geometric_median;
use crate::sae::registry::SaeArchitecture;
use crate::sae::{save_sae, Sae, SaeConfig};

/// Plots written next to each SAE.
pub const CURVES_FILE: &str = "training_curves.svg";
pub const DENSITY_FILE: &str = "feature_density.svg";

/// How a run is driven, beyond its config.
#[derive(Default)]
pub struct TrainOptions {
    /// Continue from the checkpoint in `run.out`.
    pub resume: bool,
    /// Stop (after a checkpoint) once this many steps are done, as if killed
    /// there; for tests of resuming.
    pub stop_after_steps: Option<u64>,
    /// Model, context and dataset recorded in each saved SAE's metadata.
    pub metadata: SaeMetadata,
    /// Write nothing to disk (benchmarks): no config, checkpoints, SAE folders or plots.
    pub in_memory: bool,
    /// The ranks of a job (`None`: one process); the feed serves this
    /// rank's shares, and `run.distribute_modules` says how the ranks divide
    /// the work.
    pub group: Option<std::rc::Rc<ProcessGroup>>,
    /// The shares the feed reads the data in, recorded in checkpoints (0:
    /// one per rank).
    pub read_shares: usize,
}

/// Told about progress; the CLI draws a progress bar from it.
pub trait TrainObserver {
    fn on_start(&mut self, _start_step: u64, _total_steps: u64, _batch_size: usize) {}
    fn on_step(&mut self, _step: u64, _tokens: u64, _records: &[StepRecord]) {}
    fn on_checkpoint(&mut self, _step: u64) {}
    /// Something the user should know, such as a precision that will be slow.
    fn on_warning(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl TrainObserver for Quiet {}

/// One trained SAE.
pub struct TrainedSae {
    pub name: String,
    /// Its SAELens folder (None in memory).
    pub dir: Option<PathBuf>,
    /// The SAE on the CPU, normalisation folded in: it reads raw activations.
    pub sae: Sae,
    /// The input scale that was folded in.
    pub scale: f64,
    /// The last step's metrics.
    pub last: Option<StepRecord>,
    /// Per latent, the fraction of training rows it fired on.
    pub densities: Vec<f64>,
}

pub struct TrainSummary {
    pub saes: Vec<TrainedSae>,
    pub steps: u64,
    pub tokens: u64,
    /// Wall time of this process's steps.
    pub seconds: f64,
    /// Seconds of each step this process ran (for throughput without warm-up).
    pub step_seconds: Vec<f64>,
    /// True when `stop_after_steps` ended the run early.
    pub interrupted: bool,
    /// Bytes this rank sent to move rows to the SAEs' ranks (module distribution).
    pub exchanged_bytes: u64,
}

const ADAM_M: &str = "adam.m.";
const ADAM_V: &str = "adam.v.";
const DEAD: &str = "dead.tokens_since_fired";
const FIRE_COUNTS: &str = "fire_counts";

impl SaeRun {
    fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .sae
            .weights
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t.shallow_clone()))
            .collect();
        let names: Vec<&str> = self
            .sae
            .weights
            .trainable()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        for ((name, m), v) in names.iter().zip(&self.adam.m).zip(&self.adam.v) {
            out.push((format!("{ADAM_M}{name}"), m.shallow_clone()));
            out.push((format!("{ADAM_V}{name}"), v.shallow_clone()));
        }
        out.push((DEAD.into(), self.dead.tokens_since_fired.shallow_clone()));
        out.push((FIRE_COUNTS.into(), self.fire_counts.shallow_clone()));
        out
    }

    fn restore(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        entry: &SaeCheckpoint,
    ) -> Result<()> {
        // Every tensor is checked against the one it replaces before use.
        let source = format!("checkpoint {}", entry.file);
        let get = |name: &str, like: &Tensor| take_like(tensors, name, like, &source);
        let weights = (self.sae.weights.named_tensors().into_iter())
            .map(|(n, t)| Ok((n, get(n, t)?)))
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        self.sae
            .weights
            .load_named(&|n| weights.get(n).map(Tensor::shallow_clone))?;
        let trainable = self.sae.weights.trainable();
        self.adam.m = (trainable.iter())
            .map(|(n, t)| get(&format!("{ADAM_M}{n}"), t))
            .collect::<Result<_>>()?;
        self.adam.v = (trainable.iter())
            .map(|(n, t)| get(&format!("{ADAM_V}{n}"), t))
            .collect::<Result<_>>()?;
        self.adam.step = entry.adam_step;
        self.dead.tokens_since_fired = get(DEAD, &self.dead.tokens_since_fired)?;
        self.fire_counts = get(FIRE_COUNTS, &self.fire_counts)?;
        self.scale = entry.scale;
        Ok(())
    }
}

/// Trains every SAE of `cfg` on `feed`.
pub fn train(
    cfg: &TrainConfig,
    feed: &mut dyn ActivationFeed,
    opts: &TrainOptions,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    cfg.validate()?;
    let hooks = cfg.hooks();
    let widths = feed.widths();
    if widths.len() != hooks.len() {
        return Err(Error::InvalidArgument(format!(
            "the feed serves {} hook(s) but the config trains on {}",
            widths.len(),
            hooks.len()
        )));
    }
    let out = cfg.run.out.clone();
    let ckpt_dir = checkpoint_dir(&out);
    let checkpoint = if opts.in_memory {
        None
    } else {
        let found = read_checkpoint(&ckpt_dir)?;
        if found.is_some() && !opts.resume {
            return Err(Error::Training(format!(
                "{} already holds a checkpoint; pass --resume to continue it, or choose another --out",
                out.display()
            )));
        }
        found
    };
    let mut role = Role::new(cfg, opts.group.clone())?;
    if role.step_group().is_some()
        && cfg
            .saes
            .iter()
            .any(|s| s.architecture == SaeArchitecture::BatchTopK)
    {
        return Err(Error::Training(
            "BatchTopK's threshold follows each batch; data-parallel training does not support it \
             yet (module distribution does: --distribute-modules)"
                .into(),
        ));
    }
    let read_shares = match opts.read_shares {
        0 => role.group().map_or(1, ProcessGroup::world_size),
        n => n,
    };
    // Rank 0 writes what belongs to the whole run; SAE files come from the
    // rank that trains them (rank 0 alone when data parallel).
    let writes = !opts.in_memory && role.leads();
    let writes_saes = !opts.in_memory && role.writes_saes();
    if writes {
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        write_atomic(&out.join(SAVED_CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    }

    let compute_kind = match cfg.optim.compute_dtype {
        ComputeDtype::Bf16 => Kind::BFloat16,
        ComputeDtype::F32 => Kind::Float,
    };
    let adam_cfg = AdamConfig {
        beta1: cfg.optim.beta1,
        beta2: cfg.optim.beta2,
        eps: cfg.optim.eps,
    };
    let total_steps = cfg.total_steps();

    // The first batch sets the input scale and b_dec of a fresh run, and is
    // then trained on like any other.
    let (mut first_batch, start_step, start_tokens) = match &checkpoint {
        Some((state, _)) => {
            if state.config_toml != resume_key(cfg)? {
                return Err(Error::Training(format!(
                    "the checkpoint in {} was written by a different config (only `data.tokens` and the output folder may change on --resume)",
                    ckpt_dir.display()
                )));
            }
            if state.read_shares != read_shares {
                return Err(Error::Training(format!(
                    "the checkpoint read its data in {} share(s), this feed in {read_shares}",
                    state.read_shares
                )));
            }
            feed.skip_batches(state.step)?;
            (None, state.step, state.tokens)
        }
        None => {
            let batch = feed
                .next_batch()?
                .ok_or_else(|| Error::InvalidArgument("the activation feed is empty".into()))?;
            (Some(batch), 0, 0)
        }
    };
    // A fresh run initialises from every rank's rows of the first batch.
    let mut first_counts = match &first_batch {
        Some(batch) => Some(role.rows_per_rank(batch[0].size()[0])?),
        None => None,
    };
    let first_whole = match (&first_batch, &first_counts) {
        (Some(batch), Some(counts)) => Some(role.whole_batch(batch, counts)?),
        _ => None,
    };

    let mut runs = Vec::new();
    for (i, spec) in cfg.saes.iter().enumerate() {
        if !role.trains(i, cfg.saes.len()) {
            continue;
        }
        let hook_index = hooks.iter().position(|h| *h == spec.hook).unwrap_or(0);
        let d_in = widths[hook_index];
        let device = spec.device.resolve()?;
        let d_sae = d_in.checked_mul(spec.expansion).ok_or_else(|| {
            Error::Config(format!(
                "{}: expansion {} is too large",
                spec.name(),
                spec.expansion
            ))
        })?;
        ensure_fits(training_bytes(d_in, d_sae, cfg.data.batch_size), || {
            format!(
                "training {} ({d_sae} latents on {d_in}-wide activations)",
                spec.name()
            )
        })?;
        let mut sae_cfg = SaeConfig::new(spec.architecture.name(), d_in, d_sae);
        sae_cfg.k = spec.k;
        let arch = spec.architecture.implementation();
        sae_cfg.apply_b_dec_to_input = arch.default_apply_b_dec_to_input();
        sae_cfg.metadata = opts.metadata.clone();
        sae_cfg.metadata.hook_name = Some(spec.hook.clone());
        let mut sae = Sae::init_scaled(
            sae_cfg,
            cfg.run.seed + i as u64,
            device,
            spec.encoder_init_scale,
        )?;
        let scale = match &first_whole {
            Some(batch) => input_scale(cfg, feed.mean_norms()[hook_index], &batch[hook_index])?,
            None => 1.0,
        };
        if let Some(batch) = &first_whole {
            let x = batch[hook_index].f_to_device(device)?.f_mul_scalar(scale)?;
            init_b_dec(&mut sae, cfg.run.init_b_dec, &x)?;
        }
        let name = spec.name();
        let params: Vec<&Tensor> = sae
            .weights
            .trainable()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        let adam = Adam::new(adam_cfg, &params)?;
        let d_sae = sae.cfg.d_sae as i64;
        let mut run = SaeRun {
            spec: spec.clone(),
            index: i,
            hook_index,
            device,
            dead: DeadLatents::new(d_sae, cfg.run.dead_tokens, device)?,
            fire_counts: Tensor::f_zeros([d_sae], (Kind::Float, device))?,
            metrics: None,
            last: None,
            name,
            sae,
            scale,
            adam,
        };
        let mut metrics_bytes = 0;
        if let Some((state, tensors)) = &checkpoint {
            let entry = state
                .saes
                .iter()
                .position(|s| s.name == run.name)
                .ok_or_else(|| {
                    Error::Training(format!("the checkpoint has no SAE named `{}`", run.name))
                })?;
            run.restore(&tensors[entry], &state.saes[entry])?;
            metrics_bytes = state.saes[entry].metrics_bytes;
        }
        if writes_saes {
            run.metrics = Some(MetricsLog::open(&out.join(&run.name), metrics_bytes)?);
        }
        runs.push(run);
    }

    let checkpoint_every = cfg.run.checkpoint_every_tokens;
    let mut step = start_step;
    let mut tokens = start_tokens;
    let started = Instant::now();
    let mut step_seconds = Vec::new();
    let mut interrupted = false;
    observer.on_start(start_step, total_steps, cfg.data.batch_size);
    while step < total_steps {
        let step_started = Instant::now();
        let batch = match first_batch.take() {
            Some(b) => b,
            None => match feed.next_batch()? {
                Some(b) => b,
                None => break,
            },
        };
        let counts = match first_counts.take() {
            Some(c) => c,
            None => role.rows_per_rank(batch[0].size()[0])?,
        };
        let rows: i64 = counts.iter().sum();
        let inputs = role.training_rows(batch, &counts)?;
        let mut records = Vec::with_capacity(runs.len());
        for run in runs.iter_mut() {
            records.push(train_step(
                cfg,
                run,
                &inputs,
                (step, tokens + rows as u64, rows),
                compute_kind,
                role.step_group(),
            )?);
        }
        step += 1;
        tokens += rows as u64;
        step_seconds.push(step_started.elapsed().as_secs_f64());
        observer.on_step(step, tokens, &records);
        let crossed = checkpoint_every > 0
            && tokens / checkpoint_every != (tokens - rows as u64) / checkpoint_every;
        let stop_here = opts.stop_after_steps == Some(step);
        if writes_saes && (crossed || stop_here) {
            let at = Progress {
                step,
                tokens,
                read_shares,
            };
            save_checkpoint(cfg, &ckpt_dir, &mut runs, &role, at)?;
            observer.on_checkpoint(step);
        }
        if stop_here {
            interrupted = true;
            break;
        }
    }
    if writes_saes && !interrupted {
        let at = Progress {
            step,
            tokens,
            read_shares,
        };
        save_checkpoint(cfg, &ckpt_dir, &mut runs, &role, at)?;
    }

    let mut saes = Vec::new();
    for run in runs {
        saes.push(finish(run, &out, tokens, !writes_saes || interrupted)?);
    }
    if !interrupted && !opts.in_memory {
        write_run_manifest(cfg, &role, &out, writes, (step, tokens))?;
    }
    Ok(TrainSummary {
        exchanged_bytes: role.bytes_sent(),
        saes,
        steps: step,
        tokens,
        seconds: started.elapsed().as_secs_f64(),
        step_seconds,
        interrupted,
    })
}

/// `√d / mean‖x‖` when normalising (the store's statistic, else this batch's), else 1.
fn input_scale(cfg: &TrainConfig, known_mean_norm: Option<f64>, batch: &Tensor) -> Result<f64> {
    if cfg.data.normalize == InputNormalization::None {
        return Ok(1.0);
    }
    let mean_norm = match known_mean_norm {
        Some(n) => n,
        None => batch
            .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), false)?
            .f_mean(Kind::Float)?
            .f_double_value(&[])?,
    };
    if !(mean_norm > 0.0 && mean_norm.is_finite()) {
        return Err(Error::Training(format!(
            "the activations' mean norm is {mean_norm}; cannot normalise them"
        )));
    }
    Ok((batch.size()[1] as f64).sqrt() / mean_norm)
}

fn init_b_dec(sae: &mut Sae, how: InitBDec, x: &Tensor) -> Result<()> {
    let centre = match how {
        InitBDec::GeometricMedian => geometric_median(x, 100, 1e-5)?,
        InitBDec::Mean => x.f_mean_dim([0i64].as_slice(), false, Kind::Float)?,
        InitBDec::Zeros => return Ok(()),
    };
    sae.weights.b_dec = centre.f_to_device(sae.device())?;
    Ok(())
}

/// Where a run stands, as a checkpoint records it.
#[derive(Clone, Copy)]
struct Progress {
    step: u64,
    tokens: u64,
    read_shares: usize,
}

/// Writes this process's SAEs' checkpoint tensors; under module
/// distribution the ranks then sum each SAE's entry numbers (an all-reduce,
/// which also waits for every rank's files) and rank 0 writes the state that
/// lists them all. No rank waits on another while writing, so a failed
/// write ends that rank and the others' collective fails, rather than hang.
fn save_checkpoint(
    cfg: &TrainConfig,
    dir: &Path,
    runs: &mut [SaeRun],
    role: &Role,
    at: Progress,
) -> Result<()> {
    let n = cfg.saes.len();
    // Per SAE of the config: scale, metrics bytes, Adam step (0 where another rank trains it).
    let mut numbers = vec![[0f64; 3]; n];
    let mut entries = Vec::new();
    let mut tensors = Vec::new();
    for run in runs.iter_mut() {
        let metrics_bytes = match run.metrics.as_mut() {
            Some(m) => m.sync()?,
            None => 0,
        };
        numbers[run.index] = [run.scale, metrics_bytes as f64, run.adam.step as f64];
        entries.push(checkpoint_entry(&run.name, at.step, numbers[run.index]));
        tensors.push(run.checkpoint_tensors());
    }
    write_checkpoint_tensors(dir, &entries, &tensors)?;
    if let Role::Modules(_) = role {
        let group = role
            .group()
            .ok_or_else(|| Error::Training("no group".into()))?;
        let mut all = Tensor::from_slice(numbers.concat().as_slice());
        group.all_reduce_sum(&mut all)?;
        let all = Vec::<f64>::try_from(&all)?;
        entries = cfg
            .saes
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                checkpoint_entry(
                    &spec.name(),
                    at.step,
                    [all[3 * i], all[3 * i + 1], all[3 * i + 2]],
                )
            })
            .collect();
    }
    if !role.leads() {
        return Ok(());
    }
    let state = CheckpointState {
        step: at.step,
        tokens: at.tokens,
        config_toml: resume_key(cfg)?,
        saes: entries,
        read_shares: at.read_shares,
    };
    commit_checkpoint(dir, &state)
}

/// A checkpoint's entry for SAE `name` from its scale, metrics bytes and Adam step.
fn checkpoint_entry(
    name: &str,
    step: u64,
    [scale, metrics_bytes, adam_step]: [f64; 3],
) -> SaeCheckpoint {
    SaeCheckpoint {
        name: name.to_string(),
        file: format!("{name}.step{step}.safetensors"),
        scale,
        metrics_bytes: metrics_bytes as u64,
        adam_step: adam_step as u64,
    }
}

/// Folds the scale in, saves the SAE folder and its plots.
fn finish(mut run: SaeRun, out: &Path, tokens: u64, in_memory: bool) -> Result<TrainedSae> {
    if let Some(m) = run.metrics.as_mut() {
        m.sync()?;
    }
    let mut sae = run.sae.to_device(Device::Cpu)?;
    sae.weights.fold_input_scale(run.scale)?;
    sae.cfg.normalize_activations = NORMALIZE_NONE.into();
    sae.cfg
        .metadata
        .extra
        .insert("training_tokens".into(), tokens.into());
    sae.cfg
        .metadata
        .extra
        .insert("folded_input_scale".into(), run.scale.into());
    let densities: Vec<f64> = Vec::<f64>::try_from(
        &run.fire_counts
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Double)?
            .f_div_scalar(tokens.max(1) as f64)?,
    )?;
    let dir = if in_memory {
        None
    } else {
        let dir = out.join(&run.name);
        save_sae(&sae, &dir)?;
        let records = super::metrics::read_metrics(&dir.join(METRICS_FILE))?;
        let curves = training_curves_svg(&records, &run.name)?;
        write_atomic(&dir.join(CURVES_FILE), curves.as_bytes())?;
        let hist = histogram_svg(
            &log10_densities(&densities),
            50,
            &format!("{}: feature density over training", run.name),
            "log10(fraction of tokens a latent fires on)",
        )?;
        write_atomic(&dir.join(DENSITY_FILE), hist.as_bytes())?;
        Some(dir)
    };
    Ok(TrainedSae {
        name: run.name,
        dir,
        sae,
        scale: run.scale,
        last: run.last,
        densities,
    })
}
