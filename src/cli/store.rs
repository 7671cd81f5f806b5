//! `saescope store info|verify DIR`: a store's summary, and a check of every
//! shard's checksum (non-zero exit naming each bad shard).

use std::path::PathBuf;

use clap::Subcommand;
use saescope::data::{find_stores, Store};

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Summarise a store (or each store of a multi-hook harvest folder).
    Info {
        dir: PathBuf,
        /// Print the manifests as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every shard's size and sha256 against the manifest.
    Verify { dir: PathBuf },
}

pub fn run(cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Info { dir, json } => info(dir, json),
        StoreCommand::Verify { dir } => verify(dir),
    }
}

fn info(dir: PathBuf, json: bool) -> anyhow::Result<()> {
    for path in find_stores(&dir)? {
        let store = Store::open(&path)?;
        let m = store.manifest();
        if json {
            println!("{}", serde_json::to_string(m)?);
            continue;
        }
        let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
        println!("{}", path.display());
        println!("  hook        {}", m.hook);
        println!(
            "  model       {} ({}, {} layers, sha256 {})",
            m.model.spec, m.model.architecture, m.model.n_layers, m.model.sha256
        );
        println!(
            "  rows        {} x {} {} ({:.1} MB in {} shards)",
            m.tokens,
            m.d,
            m.dtype.name(),
            bytes as f64 / 1e6,
            m.shards.len()
        );
        println!(
            "  target      {} tokens, {}",
            m.target_tokens,
            if m.complete {
                "complete"
            } else {
                "incomplete (resume with --resume)"
            }
        );
        println!(
            "  windows     {} of {} tokens{}",
            m.windows,
            m.context,
            if m.skip_bos {
                ", BOS positions left out"
            } else {
                ""
            }
        );
        println!(
            "  corpus      {}{}",
            m.corpus,
            if m.corpus_exhausted {
                " (exhausted before the target)"
            } else {
                ""
            }
        );
        println!("  mean norm   {:.4}", m.stats.mean_norm);
    }
    Ok(())
}

fn verify(dir: PathBuf) -> anyhow::Result<()> {
    let mut bad = 0;
    for path in find_stores(&dir)? {
        let store = Store::open(&path)?;
        let problems = store.verify();
        if problems.is_empty() {
            println!(
                "ok  {} ({} shards)",
                path.display(),
                store.manifest().shards.len()
            );
        }
        for p in &problems {
            eprintln!("BAD {}: {}", path.join(&p.file).display(), p.reason);
        }
        bad += problems.len();
    }
    anyhow::ensure!(bad == 0, "{bad} bad shard(s)");
    Ok(())
}
