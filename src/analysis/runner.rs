//! One forward per prompt with the hooks an analysis reads, and the two
//! things every analysis takes from it: span-pooled activation vectors, and
//! whether the model's next token is the prompt's target.

use std::collections::HashMap;

use serde::Serialize;
use tch::{Kind, Tensor};

use super::prompts::{tokenize, Prompt, TokenizedPrompt};
use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::model::{CachedRun, ForwardInput, LoadedModel, LogitsFor};

/// How a span's token activations become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Max,
    /// The span's last token.
    Last,
}

/// Runs each prompt through `model` with `hooks` cached (on to the logits
/// when `with_logits`), calling `visit(index, tokenized, run)`; `progress`
/// after each prompt.
pub fn for_each_prompt(
    model: &LoadedModel,
    prompts: &[&Prompt],
    hooks: &[HookPoint],
    with_logits: bool,
    progress: &mut dyn FnMut(usize, usize),
    visit: &mut dyn FnMut(usize, &TokenizedPrompt, &mut CachedRun) -> Result<()>,
) -> Result<()> {
    for (i, prompt) in prompts.iter().enumerate() {
        let tokenized = tokenize(prompt, &model.tokenizer)?;
        let ids = Tensor::f_from_slice(&tokenized.ids)?
            .f_view([1, -1])?
            .f_to_device(model.model.device())?;
        let logits = with_logits.then_some(LogitsFor::Last);
        let mut run = model
            .model
            .run_with_cache(&ForwardInput::tokens(&ids), hooks, logits)?;
        visit(i, &tokenized, &mut run)?;
        progress(i + 1, prompts.len());
    }
    Ok(())
}

/// Whether the run's top next token is the prompt's target token (`None`
/// without a target or logits).
pub fn is_correct(tokenized: &TokenizedPrompt, run: &CachedRun) -> Result<Option<bool>> {
    match (tokenized.target_id, &run.logits) {
        (Some(target), Some(logits)) => {
            let top = logits
                .f_reshape([-1, logits.size().last().copied().unwrap_or(1)])?
                .f_select(0, -1)?
                .f_argmax(0, false)?
                .f_int64_value(&[])?;
            Ok(Some(top == target))
        }
        _ => Ok(None),
    }
}

/// `[width]` f32 on the CPU: the activation `rows [1, seq, width]` pooled
/// over the positions of `span`.
pub fn pool(
    rows: &Tensor,
    tokenized: &TokenizedPrompt,
    span: &str,
    how: Pooling,
) -> Result<Tensor> {
    let range = tokenized.spans.get(span).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "unknown span `{span}` (the prompt has: {})",
            tokenized
                .spans
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let picked =
        rows.f_select(0, 0)?
            .f_narrow(0, range.start as i64, (range.end - range.start) as i64)?;
    let picked = picked.f_to_kind(Kind::Float)?;
    let pooled = match how {
        Pooling::Mean => picked.f_mean_dim([0i64].as_slice(), false, Kind::Float)?,
        Pooling::Max => picked.f_amax([0i64].as_slice(), false)?,
        Pooling::Last => picked.f_select(0, -1)?,
    };
    Ok(pooled.f_to_device(tch::Device::Cpu)?)
}

/// Span-pooled activations of every prompt at every hook: per hook
/// `[n_prompts, width]`, and each prompt's correctness where it has a target.
pub struct PooledActivations {
    pub by_hook: HashMap<HookPoint, Tensor>,
    pub correct: Vec<Option<bool>>,
}

impl PooledActivations {
    /// `[n_prompts, width]` at `hook`.
    pub fn at(&self, hook: HookPoint) -> Result<&Tensor> {
        self.by_hook.get(&hook).ok_or_else(|| {
            Error::InvalidArgument(format!("no activations were cached at `{hook}`"))
        })
    }
}

/// Runs `prompts` and pools each hook's rows over `span`.
pub fn pooled_activations(
    model: &LoadedModel,
    prompts: &[&Prompt],
    hooks: &[HookPoint],
    span: &str,
    how: Pooling,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PooledActivations> {
    let with_logits = prompts.iter().any(|p| p.target.is_some());
    let mut rows: HashMap<HookPoint, Vec<Tensor>> = HashMap::new();
    let mut correct = Vec::with_capacity(prompts.len());
    for_each_prompt(
        model,
        prompts,
        hooks,
        with_logits,
        progress,
        &mut |_, tokenized, run| {
            for &hook in hooks {
                let act = run.take_rows(hook)?;
                rows.entry(hook)
                    .or_default()
                    .push(pool(&act, tokenized, span, how)?);
            }
            correct.push(is_correct(tokenized, run)?);
            Ok(())
        },
    )?;
    let by_hook = rows
        .into_iter()
        .map(|(hook, vectors)| Ok((hook, Tensor::f_stack(&vectors, 0)?)))
        .collect::<Result<_>>()?;
    Ok(PooledActivations { by_hook, correct })
}

/// The fraction of `Some(true)` among the prompts that have a target.
pub fn accuracy(correct: &[Option<bool>]) -> Option<f64> {
    let scored: Vec<bool> = correct.iter().flatten().copied().collect();
    (!scored.is_empty()).then(|| scored.iter().filter(|&&c| c).count() as f64 / scored.len() as f64)
}
