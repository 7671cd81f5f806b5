//! Steered against unsteered generation speed, side by side in one run.

use std::path::PathBuf;

use crate::error::Result;
use crate::hooks::Hooks;
use crate::model::{generate, GenerateConfig, LoadedModel, SamplingConfig};
use crate::steer::{load_steer_files, steer_hooks};

/// Tokens/s (over every row) of greedy generation of `new_tokens` for
/// `batch` copies of `prompt`, with `hooks`.
fn time_generation(
    loaded: &LoadedModel,
    (prompt, batch): (&[i64], usize),
    new_tokens: usize,
    hooks: &mut Hooks,
) -> Result<f64> {
    let config = GenerateConfig {
        max_new_tokens: new_tokens,
        sampling: SamplingConfig::default(),
        stop_ids: Vec::new(),
    };
    let started = std::time::Instant::now();
    generate(
        &loaded.model,
        &vec![prompt.to_vec(); batch],
        &config,
        hooks,
        |_, _| {},
    )?;
    Ok((batch * new_tokens) as f64 / started.elapsed().as_secs_f64())
}

/// Greedy generation of `new_tokens` from `batch` copies of `prompt`,
/// unsteered and with the interventions of `steer_files`, in alternating
/// rounds after a warm-up; each side's best round, as one JSON object.
pub fn steer_bench(
    loaded: &LoadedModel,
    steer_files: &[PathBuf],
    (prompt, batch): (&str, usize),
    new_tokens: usize,
    rounds: usize,
) -> Result<serde_json::Value> {
    let ids = loaded.tokenizer.encode(prompt, true)?;
    let prompt = (ids.as_slice(), batch.max(1));
    let n_layers = loaded.model.config().n_layers;
    let mut steers = load_steer_files(steer_files, n_layers, loaded.model.device())?;
    let (mut plain, mut steered) = (0.0f64, 0.0f64);
    // Warm up both paths, then alternate, keeping each side's best round.
    for round in 0..=rounds {
        let p = time_generation(loaded, prompt, new_tokens, &mut Hooks::new())?;
        let mut hooks = steer_hooks(&mut steers);
        let q = time_generation(loaded, prompt, new_tokens, &mut hooks)?;
        if round > 0 {
            plain = plain.max(p);
            steered = steered.max(q);
        }
    }
    Ok(serde_json::json!({
        "model": loaded.spec,
        "interventions": steer_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "new_tokens": new_tokens,
        "batch": prompt.1,
        "unsteered_tokens_per_s": plain,
        "steered_tokens_per_s": steered,
        "ratio": steered / plain,
    }))
}
