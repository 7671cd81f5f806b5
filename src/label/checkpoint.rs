//! Checkpoints of the labelling pass, so a long pass resumes where it was
//! killed: the accumulator's state in `stats.safetensors`, then
//! `state.json` (tokens done and a fingerprint of the settings) written last.
//! Both are written atomically, so a kill at any moment leaves the previous
//! checkpoint whole; resuming with different settings is refused.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::stats::{AccumulatorState, RawExample};
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::io::names::is_plain_file_name;
use crate::io::safetensors::{read_safetensors, write_safetensors};

const STATS_FILE: &str = "stats.safetensors";
const STATE_FILE: &str = "state.json";

/// Where and how often to checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
    /// Tokens between checkpoints.
    pub every_tokens: u64,
    /// Continue from the checkpoint in `dir` (an error when there is none).
    pub resume: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct State {
    rows_seen: u64,
    /// The settings the pass ran with; a resume must match them.
    fingerprint: String,
    /// The statistics file this state belongs to. Each checkpoint writes a
    /// new one, then this file atomically, then removes the old one, so a
    /// kill between the two writes leaves the previous pair intact.
    #[serde(default = "default_stats_file")]
    stats_file: String,
}

fn default_stats_file() -> String {
    STATS_FILE.to_string()
}

/// Writes `state` under `dir`.
pub fn save(dir: &Path, state: &AccumulatorState, fingerprint: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let u64s = |v: &[u64]| Tensor::from_slice(&v.iter().map(|&x| x as i64).collect::<Vec<_>>());
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("rows_seen".into(), u64s(&[state.rows_seen])),
        ("nonzero".into(), u64s(&state.nonzero)),
        ("max".into(), Tensor::from_slice(&state.max)),
        ("histogram".into(), u64s(&state.histogram)),
    ];
    for (group, examples) in [("top", &state.top), ("sample", &state.sample)] {
        tensors.extend(example_tensors(group, examples));
    }
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let stats_file = format!("stats-{}.safetensors", state.rows_seen);
    write_safetensors(&dir.join(&stats_file), &named)?;
    let json = State {
        rows_seen: state.rows_seen,
        fingerprint: fingerprint.to_string(),
        stats_file: stats_file.clone(),
    };
    write_atomic(&dir.join(STATE_FILE), &serde_json::to_vec_pretty(&json)?)?;
    // Statistics of earlier checkpoints are no longer referenced.
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name != stats_file
            && (name == STATS_FILE
                || (name.starts_with("stats-") && name.ends_with(".safetensors")));
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Reads the checkpoint under `dir`, refusing one made with other settings.
pub fn load(dir: &Path, fingerprint: &str) -> Result<AccumulatorState> {
    let state_path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&state_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::InvalidArgument(format!(
                "--resume: no labelling checkpoint in {}",
                dir.display()
            ))
        } else {
            Error::io(&state_path, e)
        }
    })?;
    let state: State =
        serde_json::from_slice(&bytes).map_err(|e| Error::malformed(&state_path, e.to_string()))?;
    if state.fingerprint != fingerprint {
        return Err(Error::InvalidArgument(format!(
            "--resume: the checkpoint in {} was made with other settings ({}); now: {fingerprint}",
            dir.display(),
            state.fingerprint
        )));
    }
    if !is_plain_file_name(&state.stats_file) {
        return Err(Error::malformed(
            &state_path,
            "stats_file must be a plain file name",
        ));
    }
    let path = dir.join(&state.stats_file);
    let mut tensors = read_safetensors(&path)?;
    let mut take = |name: &str| {
        tensors
            .remove(name)
            .ok_or_else(|| Error::malformed(&path, format!("no tensor `{name}`")))
    };
    let u64s = |t: Tensor| -> Result<Vec<u64>> {
        Ok(Vec::<i64>::try_from(t.f_to_kind(Kind::Int64)?)?
            .into_iter()
            .map(|x| x as u64)
            .collect())
    };
    let rows_seen = u64s(take("rows_seen")?)?;
    if rows_seen != [state.rows_seen] {
        return Err(Error::malformed(
            &path,
            format!(
                "holds {rows_seen:?} tokens but state.json says {}",
                state.rows_seen
            ),
        ));
    }
    let nonzero = u64s(take("nonzero")?)?;
    let max = Vec::<f32>::try_from(take("max")?)?;
    let histogram = u64s(take("histogram")?)?;
    let mut groups = Vec::new();
    for group in ["top", "sample"] {
        let mut get = |field: &str| take(&format!("{group}.{field}"));
        groups.push(read_examples(
            &path,
            get("feature")?,
            get("row")?,
            get("value")?,
            get("centre")?,
            get("len")?,
            get("tokens")?,
            get("values")?,
        )?);
    }
    let sample = groups.pop().unwrap_or_default();
    let top = groups.pop().unwrap_or_default();
    Ok(AccumulatorState {
        rows_seen: state.rows_seen,
        nonzero,
        max,
        histogram,
        top,
        sample,
    })
}

/// Removes a run's checkpoint, once its dictionary is written.
pub fn remove(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(dir, e)),
        _ => Ok(()),
    }
}

/// Examples as flat columns: per example its feature, row, value, centre and
/// length; then every example's tokens and values end to end.
fn example_tensors(group: &str, examples: &[(usize, RawExample)]) -> Vec<(String, Tensor)> {
    let column = |f: &dyn Fn(&(usize, RawExample)) -> i64| {
        Tensor::from_slice(&examples.iter().map(f).collect::<Vec<i64>>())
    };
    let tokens: Vec<i32> = examples
        .iter()
        .flat_map(|(_, e)| e.tokens.iter().copied())
        .collect();
    let values: Vec<f32> = examples
        .iter()
        .flat_map(|(_, e)| e.values.iter().copied())
        .collect();
    let value: Vec<f32> = examples.iter().map(|(_, e)| e.value).collect();
    vec![
        (format!("{group}.feature"), column(&|(f, _)| *f as i64)),
        (format!("{group}.row"), column(&|(_, e)| e.row as i64)),
        (format!("{group}.value"), Tensor::from_slice(&value)),
        (format!("{group}.centre"), column(&|(_, e)| e.centre as i64)),
        (
            format!("{group}.len"),
            column(&|(_, e)| e.tokens.len() as i64),
        ),
        (format!("{group}.tokens"), Tensor::from_slice(&tokens)),
        (format!("{group}.values"), Tensor::from_slice(&values)),
    ]
}

#[allow(clippy::too_many_arguments)]
fn read_examples(
    path: &Path,
    feature: Tensor,
    row: Tensor,
    value: Tensor,
    centre: Tensor,
    len: Tensor,
    tokens: Tensor,
    values: Tensor,
) -> Result<Vec<(usize, RawExample)>> {
    let feature = Vec::<i64>::try_from(feature)?;
    let row = Vec::<i64>::try_from(row)?;
    let value = Vec::<f32>::try_from(value)?;
    let centre = Vec::<i64>::try_from(centre)?;
    let len = Vec::<i64>::try_from(len)?;
    let tokens = Vec::<i32>::try_from(tokens)?;
    let values = Vec::<f32>::try_from(values)?;
    let n = feature.len();
    // Lengths from the file are summed without overflow before any slicing.
    let total = len.iter().try_fold(0usize, |sum, &l| {
        usize::try_from(l).ok().and_then(|l| sum.checked_add(l))
    });
    let fits = [row.len(), value.len(), centre.len(), len.len()]
        .iter()
        .all(|&l| l == n)
        && total == Some(tokens.len())
        && tokens.len() == values.len()
        && feature.iter().all(|&f| f >= 0)
        && centre
            .iter()
            .zip(&len)
            .all(|(&c, &l)| c >= 0 && c < l.max(1));
    if !fits {
        return Err(Error::malformed(path, "example columns disagree in length"));
    }
    let mut out = Vec::with_capacity(n);
    let mut at = 0usize;
    for i in 0..n {
        let l = len[i] as usize;
        out.push((
            feature[i] as usize,
            RawExample {
                row: row[i] as u64,
                value: value[i],
                tokens: tokens[at..at + l].to_vec(),
                values: values[at..at + l].to_vec(),
                centre: centre[i] as usize,
            },
        ));
        at += l;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(row: u64, len: usize) -> RawExample {
        RawExample {
            row,
            value: row as f32 / 2.0,
            tokens: (0..len as i32).collect(),
            values: (0..len).map(|v| v as f32).collect(),
            centre: len / 2,
        }
    }

    #[test]
    fn round_trips_and_refuses_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        let state = AccumulatorState {
            rows_seen: 77,
            nonzero: vec![3, 0],
            max: vec![1.5, 0.0],
            histogram: vec![1; 2 * super::super::stats::HIST_BINS],
            top: vec![(0, example(5, 3)), (1, example(9, 1))],
            sample: vec![(0, example(2, 4)), (0, example(7, 2))],
        };
        save(dir.path(), &state, "a").unwrap();
        assert_eq!(load(dir.path(), "a").unwrap(), state);
        let err = load(dir.path(), "b").unwrap_err().to_string();
        assert!(err.contains("other settings"), "{err}");
        remove(dir.path()).unwrap();
        let err = load(dir.path(), "a").unwrap_err().to_string();
        assert!(err.contains("no labelling checkpoint"), "{err}");
    }
}
