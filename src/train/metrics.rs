//! Per-step training metrics, appended to `metrics.jsonl` (one JSON object
//! per line). A resumed run truncates the file back to the checkpoint, so
//! every step appears once.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plots::{panels_svg, Panel};

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

/// Four panels against training tokens: FVU (log scale), L0, dead fraction,
/// learning rate.
pub fn training_curves_svg(records: &[StepRecord], title: &str) -> Result<String> {
    type Metric = fn(&StepRecord) -> f64;
    let series: [(&str, Metric, bool); 4] = [
        ("FVU (log scale)", |r| r.fvu, true),
        ("L0 (active latents per token)", |r| r.l0, false),
        ("dead fraction", |r| r.dead_fraction, false),
        ("learning rate", |r| r.lr, false),
    ];
    let panels = series
        .into_iter()
        .map(|(name, get, log)| Panel {
            name,
            points: records.iter().map(|r| (r.tokens as f64, get(r))).collect(),
            log,
        })
        .collect();
    let max_tokens = records.last().map_or(1, |r| r.tokens.max(1)) as f64;
    panels_svg(panels, max_tokens, "tokens", title)
}

#[cfg(test)]
mod curve_tests {
    use super::*;

    #[test]
    fn training_curves_are_an_svg_with_the_four_metrics() {
        let records: Vec<StepRecord> = (0..5)
            .map(|i| StepRecord {
                step: i,
                tokens: (i + 1) * 100,
                loss: 1.0 / (i + 1) as f64,
                mse: 0.1,
                fvu: 1.0 / (i + 1) as f64,
                explained_variance: 0.5,
                l0: 32.0,
                dead_fraction: 0.0,
                lr: 1e-3,
                sparsity_coefficient: 0.0,
                sparsity_loss: 0.0,
                aux_loss: 0.0,
            })
            .collect();
        let svg = training_curves_svg(&records, "run A").unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("run A") && svg.contains("FVU"));
        assert!(svg.contains("dead fraction") && svg.contains("learning rate"));
    }
}
