//! Per-step training metrics, appended to `metrics.jsonl` (one JSON object
//! per line). A resumed run truncates the file back to the checkpoint, so
//! every step appears once.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// One SAE's numbers at one step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub step: u64,
    /// Training rows seen after this step.
    pub tokens: u64,
    pub loss: f64,
    pub mse: f64,
    pub fvu: f64,
    pub explained_variance: f64,
    pub l0: f64,
    pub dead_fraction: f64,
    pub lr: f64,
    pub sparsity_coefficient: f64,
    pub sparsity_loss: f64,
    pub aux_loss: f64,
}

/// An open `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` for appending, first cutting it to
    /// `keep_bytes` (the length recorded by the checkpoint being resumed;
    /// 0 starts afresh).
    pub fn open(dir: &Path, keep_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(METRICS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.set_len(keep_bytes).map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog {
            path,
            out: BufWriter::new(file),
        })
    }

    pub fn write(&mut self, record: &StepRecord) -> Result<()> {
        let line = serde_json::to_string(record)?;
        writeln!(self.out, "{line}").map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes and syncs; returns the file's length (what a checkpoint records).
    pub fn sync(&mut self) -> Result<u64> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        let file = self.out.get_ref();
        file.sync_data().map_err(|e| Error::io(&self.path, e))?;
        Ok(file.metadata().map_err(|e| Error::io(&self.path, e))?.len())
    }
}

/// Reads every record of a `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<StepRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::malformed(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}
