//! Harvesting: packed windows run through the model in batches (no gradients,
//! stopping after the last requested hook), every requested hook cached in the
//! same pass, and each hook's rows appended shard by shard to its own store.
//!
//! A harvest is resumable: the token stream is deterministic, so a resumed run
//! keeps the shards its manifests list, skips the windows they hold and writes
//! the rest; the result is identical to an uninterrupted run. Progress goes to
//! a [`HarvestObserver`]; the library never prints. Packing and writing run on
//! their own threads beside the forwards (see `pipeline`).
//!
//! The ranks of a job harvest one store together (`ranks`): each writes the
//! shards of its part ([`harvest_part`]), and rank 0 merges the parts'
//! manifests.

pub mod config;
mod pipeline;
pub mod ranks;
pub mod stream;

pub use config::{store_dir, HarvestConfig, HarvestObserver, HarvestSummary, Silent};

use std::path::{Path, PathBuf};

use super::corpus::Corpus;
use super::packing::{PackConfig, Packer};
use super::share::Share;
use super::store::StoreWriter;
use crate::data::harvest::pipeline::{Job, PackPlan};
use crate::data::store::manifest::{Manifest, ModelInfo, NormStats, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::io::atomic::sha256_file;
use crate::model::LoadedModel;

/// sha256 of the model's file; for a folder, of the concatenated sha256s
/// and names of its `config.json`, `tokenizer.json` and `*.safetensors`, sorted.
pub fn model_sha256(path: &Path) -> Result<String> {
    if path.is_file() {
        return sha256_file(path);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name == "config.json" || name == "tokenizer.json" || name.ends_with(".safetensors")
        })
        .collect();
    files.sort();
    let mut listing = String::new();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        listing.push_str(&format!("{}  {name}\n", sha256_file(&file)?));
    }
    Ok(crate::io::atomic::sha256_hex(listing.as_bytes()))
}

/// `f32`, `bf16`, `f16` or `f64` for a model's kind.
fn kind_name(kind: tch::Kind) -> String {
    match kind {
        tch::Kind::Float => "f32".into(),
        tch::Kind::BFloat16 => "bf16".into(),
        tch::Kind::Half => "f16".into(),
        tch::Kind::Double => "f64".into(),
        other => format!("{other:?}"),
    }
}

/// Checks `cfg` against `model`.
fn validate(model: &LoadedModel, cfg: &HarvestConfig) -> Result<()> {
    let mc = model.model.config();
    if cfg.hooks.is_empty() {
        return Err(Error::InvalidArgument("no hook points to harvest".into()));
    }
    let mut sorted = cfg.hooks.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != cfg.hooks.len() {
        return Err(Error::InvalidArgument(
            "a hook point is listed twice".into(),
        ));
    }
    for &hook in &cfg.hooks {
        if hook.layer().is_some_and(|l| l >= mc.n_layers) {
            return Err(Error::UnknownHook {
                name: hook.to_string(),
                reason: format!("the model has {} blocks", mc.n_layers),
            });
        }
        if hook == HookPoint::PosEmbed
            && !matches!(mc.positions, crate::model::config::PositionKind::Learned)
        {
            return Err(Error::UnknownHook {
                name: hook.to_string(),
                reason: "the model has no learned position embeddings".into(),
            });
        }
        mc.hook_width(hook)?;
    }
    if cfg.context < 2 || cfg.context as i64 > mc.max_context {
        return Err(Error::InvalidArgument(format!(
            "context {} must be between 2 and the model's {} tokens",
            cfg.context, mc.max_context
        )));
    }
    if cfg.batch == 0 || cfg.tokens == 0 || cfg.shard_tokens == 0 {
        return Err(Error::InvalidArgument(
            "batch, tokens and shard size must be positive".into(),
        ));
    }
    Ok(())
}

/// The manifest a fresh store of `hook` starts with.
fn fresh_manifest(
    model: &LoadedModel,
    cfg: &HarvestConfig,
    hook: HookPoint,
    pack: &PackConfig,
    model_sha: &str,
    windows_per_shard: u64,
) -> Result<Manifest> {
    let mc = model.model.config();
    let d = mc.hook_width(hook)?;
    Ok(Manifest {
        format_version: FORMAT_VERSION,
        model: ModelInfo {
            spec: model.spec.clone(),
            sha256: model_sha.to_string(),
            architecture: mc.architecture.clone(),
            n_layers: mc.n_layers,
            d_model: mc.d_model,
            dtype: kind_name(model.model.kind()),
        },
        hook: hook.to_string(),
        dtype: cfg.dtype,
        d,
        context: cfg.context,
        skip_bos: cfg.skip_bos,
        bos_token_id: pack.bos,
        separator_token_id: pack.separator,
        corpus: cfg.corpus.clone(),
        text_field: cfg.text_field.clone(),
        seed: cfg.seed,
        batch: cfg.batch,
        windows_per_shard,
        target_tokens: cfg.tokens,
        tokens: 0,
        windows: 0,
        complete: false,
        corpus_exhausted: false,
        shards: Vec::new(),
        stats: NormStats::new(d),
    })
}

/// The fields of an existing manifest that a resume must match.
fn check_resumable(existing: &Manifest, fresh: &Manifest, dir: &Path) -> Result<()> {
    let (e, f) = (existing, fresh);
    let settings: [(&str, String, String); 11] = [
        (
            "model sha256",
            e.model.sha256.clone(),
            f.model.sha256.clone(),
        ),
        ("model dtype", e.model.dtype.clone(), f.model.dtype.clone()),
        ("hook", e.hook.clone(), f.hook.clone()),
        ("dtype", e.dtype.name().into(), f.dtype.name().into()),
        ("context", e.context.to_string(), f.context.to_string()),
        ("skip_bos", e.skip_bos.to_string(), f.skip_bos.to_string()),
        ("corpus", e.corpus.clone(), f.corpus.clone()),
        ("text field", e.text_field.clone(), f.text_field.clone()),
        ("batch", e.batch.to_string(), f.batch.to_string()),
        (
            "windows per shard",
            e.windows_per_shard.to_string(),
            f.windows_per_shard.to_string(),
        ),
        (
            "target tokens",
            e.target_tokens.to_string(),
            f.target_tokens.to_string(),
        ),
    ];
    let differ: Vec<String> = settings
        .iter()
        .filter(|(_, stored, asked)| stored != asked)
        .map(|(name, stored, asked)| format!("{name}: stored {stored}, asked {asked}"))
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(Error::store(
            dir,
            format!("cannot resume, settings differ: {}", differ.join("; ")),
        ))
    }
}

/// Harvests `cfg.hooks` of `model` over `cfg.corpus` into `cfg.out`.
///
/// The forward passes run on the calling thread; packing windows and writing
/// shards run beside them (see the `pipeline` module), and so does the model's
/// sha256 for new stores.
pub fn harvest(
    model: &LoadedModel,
    cfg: &HarvestConfig,
    observer: &mut dyn HarvestObserver,
) -> Result<HarvestSummary> {
    harvest_part(model, cfg, None, observer)
}

/// [`harvest`] of `part`'s shards only (all of them when `None`), into that
/// part's manifest and shard files (see `store::parts`); resumes from them.
pub fn harvest_part(
    model: &LoadedModel,
    cfg: &HarvestConfig,
    part: Option<Share>,
    observer: &mut dyn HarvestObserver,
) -> Result<HarvestSummary> {
    validate(model, cfg)?;
    let corpus = Corpus::open(&cfg.corpus, &cfg.text_field)?;
    let pack = PackConfig::for_tokenizer(&model.tokenizer, cfg.context);
    let skip = usize::from(cfg.skip_bos && pack.bos.is_some());
    let rows_per_window = (cfg.context - skip) as u64;
    let windows_per_shard = (cfg.shard_tokens / rows_per_window).max(1);
    let target_windows = cfg.tokens.div_ceil(rows_per_window);
    let dirs: Vec<PathBuf> = cfg
        .hooks
        .iter()
        .map(|&hook| store_dir(&cfg.out, &cfg.hooks, hook))
        .collect();
    let mut plan = PackPlan {
        done_windows: 0,
        target_windows,
        windows_per_shard,
        batch: cfg.batch,
        part,
        part_done_shards: 0,
    };
    let resuming = cfg.resume && dirs.iter().any(|d| StoreWriter::exists(d, part));
    if !resuming {
        // New stores: refused now if taken, written once the model's sha256
        // is known, which the writer thread works out while the model runs.
        let mut manifests = Vec::with_capacity(dirs.len());
        for (dir, &hook) in dirs.iter().zip(&cfg.hooks) {
            StoreWriter::check_new_part(dir, part)?;
            manifests.push(fresh_manifest(
                model,
                cfg,
                hook,
                &pack,
                "",
                windows_per_shard,
            )?);
        }
        let model_path = model.path.clone();
        let open = move || {
            let sha = model_sha256(&model_path)?;
            dirs.iter()
                .zip(manifests)
                .map(|(dir, mut manifest)| {
                    manifest.model.sha256.clone_from(&sha);
                    StoreWriter::create_part(dir, manifest, part)
                })
                .collect()
        };
        let job = Job {
            model,
            cfg,
            packer: Packer::new(&corpus, &model.tokenizer, pack)?,
            plan,
            skip,
            kept_shards: 0,
            kept_rows: 0,
        };
        return job.run(open, observer);
    }

    let model_sha = model_sha256(&model.path)?;
    let mut writers = Vec::with_capacity(cfg.hooks.len());
    for (dir, &hook) in dirs.iter().zip(&cfg.hooks) {
        let fresh = fresh_manifest(model, cfg, hook, &pack, &model_sha, windows_per_shard)?;
        let writer = if StoreWriter::exists(dir, part) {
            let writer = StoreWriter::resume_part(dir, part)?;
            check_resumable(writer.manifest(), &fresh, dir)?;
            writer
        } else {
            StoreWriter::create_part(dir, fresh, part)?
        };
        writers.push(writer);
    }
    // Line the stores up on the shards they all hold.
    let kept = writers
        .iter()
        .map(|w| w.manifest().shards.len())
        .min()
        .unwrap_or(0);
    let most = writers
        .iter()
        .map(|w| w.manifest().shards.len())
        .max()
        .unwrap_or(0);
    if most > kept + 1 {
        return Err(Error::store(
            &cfg.out,
            format!(
                "the hooks' stores hold between {kept} and {most} shards; a harvest interrupted \
                 between hooks differs by at most one: resume with the same hooks"
            ),
        ));
    }
    for w in &mut writers {
        w.truncate(kept)?;
    }
    let done_windows = writers[0].manifest().windows;
    let done_rows = writers[0].manifest().tokens;
    if writers.iter().all(|w| w.manifest().complete) {
        let m = writers[0].manifest();
        return Ok(HarvestSummary {
            stores: dirs,
            rows: m.tokens,
            windows: m.windows,
            shards: m.shards.len(),
            kept_shards: kept,
            kept_rows: done_rows,
            forward_secs: 0.0,
            corpus_exhausted: m.corpus_exhausted,
        });
    }

    let mut packer = Packer::new(&corpus, &model.tokenizer, pack)?;
    if part.is_some() {
        // A part skips the shards it holds as it skips the other parts'.
        plan.part_done_shards = kept as u64;
    } else {
        let skipped = packer.skip(done_windows)?;
        if skipped != done_windows {
            return Err(Error::store(
                &cfg.out,
                format!("the corpus now yields {skipped} windows, fewer than the {done_windows} already stored; has it changed?"),
            ));
        }
        plan.done_windows = done_windows;
    }
    let job = Job {
        model,
        cfg,
        packer,
        plan,
        skip,
        kept_shards: kept,
        kept_rows: done_rows,
    };
    job.run(move || Ok(writers), observer)
}
