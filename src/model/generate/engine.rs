//! The continuous-batching generation engine that `saescope generate` and
//! `saescope serve` share: sequences join the running batch when they arrive
//! and leave it as soon as they finish, each with its own interventions,
//! sampling settings and stop conditions.
//!
//! How: one KV cache holds every running sequence, `[sequences, n_kv_heads,
//! capacity, d_head]`, all ending at the same cached length `T`. A new
//! sequence's prompt runs alone (a batch of one, with its own interventions),
//! and its keys and values are copied in so that they end at `T`; the
//! positions before its start are masked, and its rotary positions count from
//! its own first token, so each row computes what it would alone. Every decode
//! step then runs the running sequences as one batch (the fused CPU step up to
//! its row limit), their interventions restricted to their own rows
//! ([`ForSequences`]). A finished sequence's row is refilled from the last
//! row, and when the cache is full every row moves left by the oldest
//! sequence's start.

use tch::Tensor;

use super::choose;
use super::sampling::{Sampler, SamplingConfig};
use crate::error::{Error, Result};
use crate::hooks::{ForSequences, Hooks, Intervention};
use crate::model::kv_cache::KvCache;
use crate::model::transformer::{ForwardInput, LogitsFor, StopAt, Transformer};

/// How many sequences the engine runs at once, and how long each may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences in the running batch at most.
    pub max_sequences: usize,
    /// Prompt plus new tokens of one sequence, at most.
    pub max_context: usize,
}

/// One sequence to generate.
pub struct SequenceRequest {
    /// Token ids, non-empty.
    pub prompt: Vec<i64>,
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Finish at any of these ids (the id is still emitted).
    pub stop_ids: Vec<i64>,
    /// Interventions on this sequence only, applied in order at every step,
    /// prompt included.
    pub steers: Vec<Box<dyn Intervention>>,
    /// What the steers are, when they are shared ones: sequences with equal
    /// keys carry interventions that do the same, and a decode step applies
    /// one sequence's to all of them at once (a server's loaded steer used
    /// by many requests). `None`: this sequence's steers are its own.
    pub steers_key: Option<Vec<(u64, u64)>>,
}

/// Why a sequence finished, named as OpenAI's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop id (or, in the server, a stop string).
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A token the engine produced for sequence `id`; `finished` on its last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emitted {
    pub id: u64,
    pub token: i64,
    pub finished: Option<FinishReason>,
}

/// A sequence in the running batch; row `r` of the cache is `running[r]`.
struct Running {
    id: u64,
    /// Cache position of its first prompt token.
    start: i64,
    /// The token to feed at the next step.
    last: i64,
    remaining: usize,
    stop_ids: Vec<i64>,
    steers: Vec<ForSequences<Box<dyn Intervention>>>,
    steers_key: Option<Vec<(u64, u64)>>,
}

pub struct Engine<'m> {
    model: &'m Transformer,
    config: EngineConfig,
    cache: KvCache,
    running: Vec<Running>,
    /// `samplers[r]` draws row `r`'s tokens (kept apart for [`choose`]).
    samplers: Vec<Sampler>,
    /// Times every row moved to make room (right for a long prompt, left
    /// when the cache was full).
    cache_moves: u64,
}

impl<'m> Engine<'m> {
    /// An idle engine; its cache holds `max_sequences` sequences of twice
    /// `max_context` positions, so that making room is rare.
    pub fn new(model: &'m Transformer, config: EngineConfig) -> Result<Self> {
        let longest = model.config().max_context;
        if config.max_sequences == 0 || config.max_context < 2 {
            return Err(Error::InvalidArgument(format!(
                "the engine needs at least one sequence of two tokens, got {config:?}"
            )));
        }
        if longest > 0 && config.max_context as i64 > longest {
            return Err(Error::InvalidArgument(format!(
                "a context of {} tokens is longer than the model's {longest}",
                config.max_context
            )));
        }
        let capacity = 2 * config.max_context as i64;
        let bytes = cache_bytes(model, config.max_sequences as i64, capacity);
        crate::machine::memory::ensure_fits(bytes, || {
            format!(
                "a KV cache for {} sequences of {capacity} positions",
                config.max_sequences
            )
        })?;
        let mut cache = model.new_cache(config.max_sequences as i64, capacity);
        cache.set_rows(0)?;
        Ok(Engine {
            model,
            config,
            cache,
            running: Vec::new(),
            samplers: Vec::new(),
            cache_moves: 0,
        })
    }

    /// Sequences now running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Times the rows moved within the cache to make room.
    pub fn cache_moves(&self) -> u64 {
        self.cache_moves
    }

    /// Whether another sequence can join now.
    pub fn has_room(&self) -> bool {
        self.running.len() < self.config.max_sequences
    }

    /// Runs `request`'s prompt and returns its first token. Unless that token
    /// finishes it, the sequence joins the running batch as `id`.
    pub fn admit(&mut self, id: u64, request: SequenceRequest) -> Result<Emitted> {
        let prompt_len = request.prompt.len();
        if prompt_len == 0 || request.max_new_tokens == 0 {
            return Err(Error::InvalidArgument(
                "a sequence needs a prompt and at least one new token".into(),
            ));
        }
        if prompt_len + request.max_new_tokens > self.config.max_context {
            return Err(Error::InvalidArgument(format!(
                "{prompt_len} prompt tokens plus {} new ones exceed the context of {}",
                request.max_new_tokens, self.config.max_context
            )));
        }
        if !self.has_room() {
            return Err(Error::InvalidArgument(format!(
                "the engine already runs {} sequences",
                self.running.len()
            )));
        }
        let mut sampler = [Sampler::new(request.sampling)?];
        let mut steers: Vec<_> = request
            .steers
            .into_iter()
            .map(|inner| ForSequences {
                sequences: vec![true],
                inner,
            })
            .collect();
        // The prompt alone, with its own cache.
        let len = prompt_len as i64;
        let mut own = self.model.new_cache(1, len);
        let tokens = Tensor::from_slice(&request.prompt).view([1, len]);
        let logits = forward(self.model, &tokens, None, None, &mut own, &mut steers)?;
        let token = choose(&logits, &mut sampler)?[0];
        let remaining = request.max_new_tokens - 1;
        let finished = finish(token, &request.stop_ids, remaining);
        if finished.is_none() {
            self.join(&own, len)?;
            let [sampler] = sampler;
            self.samplers.push(sampler);
            self.running.push(Running {
                id,
                start: self.cache.len() - len,
                last: token,
                remaining,
                stop_ids: request.stop_ids,
                steers,
                steers_key: request.steers_key,
            });
        }
        Ok(Emitted {
            id,
            token,
            finished,
        })
    }

    /// Copies a prompt's cache (`len` positions) into the next free row so that
    /// it ends where the running rows do, moving them right if it is longer.
    fn join(&mut self, own: &KvCache, len: i64) -> Result<()> {
        let behind = len - self.cache.len();
        if behind > 0 && !self.running.is_empty() {
            self.cache_moves += 1;
        }
        if behind > 0 {
            self.cache.shift(behind)?;
            self.running.iter_mut().for_each(|r| r.start += behind);
        }
        let row = self.running.len() as i64;
        self.cache
            .copy_sequence(own, 0, row, self.cache.len() - len)?;
        self.cache.set_rows(row + 1)
    }

    /// One decode step of every running sequence: a token each, in row order.
    /// Finished sequences leave the batch.
    pub fn step(&mut self) -> Result<Vec<Emitted>> {
        if self.running.is_empty() {
            return Ok(Vec::new());
        }
        self.make_room()?;
        let n = self.running.len();
        let now = self.cache.len();
        let last: Vec<i64> = self.running.iter().map(|r| r.last).collect();
        let positions: Vec<i64> = self.running.iter().map(|r| now - r.start).collect();
        let mask = self.running.iter().any(|r| r.start > 0).then(|| {
            let visible: Vec<i64> = self
                .running
                .iter()
                .flat_map(|r| (0..=now).map(move |t| i64::from(t >= r.start)))
                .collect();
            Tensor::from_slice(&visible).view([n as i64, now + 1])
        });
        let tokens = Tensor::from_slice(&last).view([n as i64, 1]);
        let positions = Tensor::from_slice(&positions).view([n as i64, 1]);
        // Each sequence's interventions on its own row only, except that
        // sequences with the same shared steers take the first one's, on
        // all their rows.
        let mut leader_of: Vec<usize> = (0..n).collect();
        for row in 0..n {
            if let Some(key) = &self.running[row].steers_key {
                if let Some(first) =
                    (0..row).find(|&r| self.running[r].steers_key.as_ref() == Some(key))
                {
                    leader_of[row] = leader_of[first];
                }
            }
        }
        for (row, running) in self.running.iter_mut().enumerate() {
            for steer in &mut running.steers {
                steer.sequences = leader_of.iter().map(|&l| l == row).collect();
            }
        }
        let mut steers: Vec<&mut ForSequences<Box<dyn Intervention>>> = self
            .running
            .iter_mut()
            .enumerate()
            .filter(|(row, _)| leader_of[*row] == *row)
            .flat_map(|(_, r)| r.steers.iter_mut())
            .collect();
        let logits = forward_hooked(
            self.model,
            (&tokens, Some(&positions), mask.as_ref()),
            &mut self.cache,
            &mut steers,
        )?;
        let next = choose(&logits, &mut self.samplers)?;
        let mut emitted = Vec::with_capacity(n);
        for (running, &token) in self.running.iter_mut().zip(&next) {
            running.remaining -= 1;
            running.last = token;
            emitted.push(Emitted {
                id: running.id,
                token,
                finished: finish(token, &running.stop_ids, running.remaining),
            });
        }
        for row in (0..n).rev() {
            if emitted[row].finished.is_some() {
                self.remove_row(row)?;
            }
        }
        Ok(emitted)
    }

    /// Stops sequence `id` (a client that left, a stop string); false if it
    /// is not running.
    pub fn cancel(&mut self, id: u64) -> Result<bool> {
        match self.running.iter().position(|r| r.id == id) {
            Some(row) => self.remove_row(row).map(|()| true),
            None => Ok(false),
        }
    }

    /// Drops every running sequence (after an error that left the batch in
    /// an unknown state).
    pub fn clear(&mut self) -> Result<()> {
        self.running.clear();
        self.samplers.clear();
        self.cache.shift(-self.cache.len())?;
        self.cache.set_rows(0)
    }

    /// Removes row `row`, moving the last row into its place.
    fn remove_row(&mut self, row: usize) -> Result<()> {
        let last = self.running.len() - 1;
        self.cache.move_sequence(last as i64, row as i64)?;
        self.running.swap_remove(row);
        self.samplers.swap_remove(row);
        self.cache.set_rows(last as i64)?;
        if self.running.is_empty() {
            self.cache.shift(-self.cache.len())?;
        }
        Ok(())
    }

    /// Frees a position for the next step when the cache is full, by moving
    /// every row left past the oldest sequence's start.
    fn make_room(&mut self) -> Result<()> {
        let capacity = 2 * self.config.max_context as i64;
        if self.cache.len() < capacity {
            return Ok(());
        }
        let oldest = self.running.iter().map(|r| r.start).min().unwrap_or(0);
        if oldest == 0 {
            return Err(Error::InvalidArgument(
                "the KV cache is full and no sequence can move".into(),
            ));
        }
        self.cache.shift(-oldest)?;
        self.cache_moves += 1;
        self.running.iter_mut().for_each(|r| r.start -= oldest);
        Ok(())
    }
}

/// Generates one sequence on an engine of its own, calling `on_token` with
/// each new token as it exists: what `saescope generate` runs. The tokens
/// equal those of the same request in a server's batch.
pub fn generate_sequence(
    model: &Transformer,
    request: SequenceRequest,
    mut on_token: impl FnMut(i64),
) -> Result<(Vec<i64>, FinishReason)> {
    let config = EngineConfig {
        max_sequences: 1,
        max_context: (request.prompt.len() + request.max_new_tokens).max(2),
    };
    let mut engine = Engine::new(model, config)?;
    let mut tokens = Vec::new();
    let mut emitted = vec![engine.admit(0, request)?];
    loop {
        for e in &emitted {
            tokens.push(e.token);
            on_token(e.token);
            if let Some(reason) = e.finished {
                return Ok((tokens, reason));
            }
        }
        emitted = engine.step()?;
    }
}

/// Whether `token` finishes a sequence with `remaining` tokens left to make.
fn finish(token: i64, stop_ids: &[i64], remaining: usize) -> Option<FinishReason> {
    if stop_ids.contains(&token) {
        Some(FinishReason::Stop)
    } else if remaining == 0 {
        Some(FinishReason::Length)
    } else {
        None
    }
}

/// Bytes of a KV cache of `sequences × capacity` positions.
fn cache_bytes(model: &Transformer, sequences: i64, capacity: i64) -> u64 {
    let c = model.config();
    let per_position = 2 * c.n_layers as i64 * c.n_kv_heads * c.d_head * 4;
    (sequences.max(0) as u64) * (capacity.max(0) as u64) * per_position.max(0) as u64
}

/// A forward of `tokens [1, seq]` into `cache` with `steers`: logits `[1, vocab]`.
fn forward(
    model: &Transformer,
    tokens: &Tensor,
    positions: Option<&Tensor>,
    mask: Option<&Tensor>,
    cache: &mut KvCache,
    steers: &mut [ForSequences<Box<dyn Intervention>>],
) -> Result<Tensor> {
    let mut refs: Vec<&mut ForSequences<Box<dyn Intervention>>> = steers.iter_mut().collect();
    forward_hooked(model, (tokens, positions, mask), cache, &mut refs)
}

/// The forward of one engine call: `(tokens [n, seq], positions, mask)` with
/// the sequences' interventions; the last position's logits `[n, vocab]`.
fn forward_hooked(
    model: &Transformer,
    (tokens, positions, mask): (&Tensor, Option<&Tensor>, Option<&Tensor>),
    cache: &mut KvCache,
    steers: &mut [&mut ForSequences<Box<dyn Intervention>>],
) -> Result<Tensor> {
    let mut hooks = Hooks::new();
    for steer in steers.iter_mut() {
        hooks.push(&mut **steer);
    }
    let input = ForwardInput {
        tokens,
        positions,
        attention_mask: mask,
        start_at: None,
    };
    let logits = tch::no_grad(|| {
        model.forward(
            &input,
            Some(cache),
            &mut hooks,
            StopAt::Logits(LogitsFor::Last),
        )
    })?
    .ok_or_else(|| Error::InvalidArgument("forward stopped before the logits".into()))?;
    Ok(logits.squeeze_dim(1))
}
