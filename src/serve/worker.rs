//! The engine's thread: it owns the model, the loaded steers and the
//! [`Engine`], takes jobs from the HTTP handlers, admits them as rows free up
//! (the rest wait in arrival order), runs one decode step of the whole batch
//! at a time, and sends each job its text as it is decoded. A job whose
//! handler has gone (the client disconnected) leaves the batch before the
//! next step.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use super::steering::{FieldError, LoadedSteers, SteerItem};
use crate::error::Result;
use crate::model::generate::chat::{chat_turns, default_system_prompt};
use crate::model::generate::engine::{Emitted, Engine, SequenceRequest};
use crate::model::{LoadedModel, SamplingConfig};

/// What a job asks to continue.
pub enum Prompt {
    /// Plain text, after the BOS token.
    Text(String),
    /// `(role, content)` turns, in the model's chat format.
    Chat(Vec<(String, String)>),
}

pub struct Job {
    pub prompt: Prompt,
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Finish before any of these strings (which are not returned).
    pub stop: Vec<String>,
    pub steer: Vec<SteerItem>,
    pub default_steer: bool,
    /// Generate past end-of-sequence tokens (vLLM's `ignore_eos`).
    pub ignore_eos: bool,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

/// What a job's handler hears, in order: `Started`, then `Text` pieces, then
/// `Done`; or `Failed` / `Error` instead.
#[derive(Debug)]
pub enum Event {
    Started {
        prompt_tokens: usize,
    },
    Text(String),
    Done {
        finish_reason: &'static str,
        completion_tokens: usize,
    },
    /// The request cannot run as asked (400).
    Failed(FieldError),
    /// The engine failed (500).
    Error(String),
}

pub enum Command {
    Submit(Job),
    /// Cancel every job (the shutdown timeout passed).
    CancelAll,
}

/// The longest prompt and output a job may have.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_prompt_tokens: usize,
    pub max_tokens: usize,
    /// A pause after every decode step (tests only).
    pub step_pause: Option<std::time::Duration>,
}

/// A job in the running batch.
struct Live {
    events: UnboundedSender<Event>,
    stop: Vec<String>,
    stop_ids: Vec<i64>,
    ids: Vec<i64>,
    /// Bytes of the decoded text already sent.
    sent: usize,
    last_token_at: Instant,
}

/// The engine loop; returns when every handler's sender is gone.
pub fn work(
    loaded: &LoadedModel,
    steers: &LoadedSteers,
    limits: Limits,
    engine: &mut Engine,
    commands: &Receiver<Command>,
    metrics: &Arc<Metrics>,
) -> Result<()> {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut live: HashMap<u64, Live> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        if live.is_empty() && waiting.is_empty() {
            match commands.recv() {
                Ok(command) => take(command, &mut waiting, &mut live, engine, metrics)?,
                Err(_) => return Ok(()),
            }
        }
        while let Ok(command) = commands.try_recv() {
            take(command, &mut waiting, &mut live, engine, metrics)?;
        }
        // Clients that left free their rows now.
        let gone: Vec<u64> = live
            .iter()
            .filter(|(_, l)| l.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            engine.cancel(id)?;
            live.remove(&id);
            metrics.finished("cancelled");
        }
        waiting.retain(|j| !j.events.is_closed());
        while engine.has_room() {
            let Some(job) = waiting.pop_front() else {
                break;
            };
            next_id += 1;
            if let Some((first, l)) = admit(loaded, steers, limits, engine, next_id, job, metrics) {
                live.insert(next_id, l);
                deliver(loaded, engine, &mut live, first, metrics)?;
            }
        }
        metrics
            .waiting
            .store(waiting.len() as u64, Ordering::Relaxed);
        if engine.running() > 0 {
            match engine.step() {
                Ok(emitted) => {
                    for e in emitted {
                        deliver(loaded, engine, &mut live, e, metrics)?;
                    }
                }
                Err(e) => {
                    for (_, l) in live.drain() {
                        let _ = l.events.send(Event::Error(e.to_string()));
                    }
                    engine.clear()?;
                }
            }
        }
        metrics
            .running
            .store(engine.running() as u64, Ordering::Relaxed);
        if let Some(pause) = limits.step_pause.filter(|_| engine.running() > 0) {
            std::thread::sleep(pause);
        }
        metrics
            .cache_moves
            .store(engine.cache_moves(), Ordering::Relaxed);
    }
}

fn take(
    command: Command,
    waiting: &mut VecDeque<Job>,
    live: &mut HashMap<u64, Live>,
    engine: &mut Engine,
    metrics: &Metrics,
) -> Result<()> {
    match command {
        Command::Submit(job) => waiting.push_back(job),
        Command::CancelAll => {
            for job in waiting.drain(..) {
                done(&job.events, "cancelled", 0, metrics);
            }
            for (id, l) in live.drain() {
                engine.cancel(id)?;
                done(&l.events, "cancelled", l.ids.len(), metrics);
            }
        }
    }
    Ok(())
}

fn done(events: &UnboundedSender<Event>, reason: &'static str, tokens: usize, metrics: &Metrics) {
    metrics.finished(reason);
    let _ = events.send(Event::Done {
        finish_reason: reason,
        completion_tokens: tokens,
    });
}

/// Tokenizes and checks `job`, builds its steers and runs its prompt: its
/// first token and its state, or `None` when it failed (and was told).
fn admit(
    loaded: &LoadedModel,
    steers: &LoadedSteers,
    limits: Limits,
    engine: &mut Engine,
    id: u64,
    job: Job,
    metrics: &Metrics,
) -> Option<(Emitted, Live)> {
    let fail = |param: &str, message: String| {
        let _ = job
            .events
            .send(Event::Failed(FieldError::new(param, message)));
    };
    let tok = &loaded.tokenizer;
    let mut stop_ids = tok.eos_ids().to_vec();
    let (encoded, param) = match &job.prompt {
        Prompt::Text(text) => (tok.encode(text, true), "prompt"),
        Prompt::Chat(turns) => {
            let mut turns: Vec<(&str, &str)> = turns
                .iter()
                .map(|(r, c)| (r.as_str(), c.as_str()))
                .collect();
            let default = loaded
                .chat_template
                .as_deref()
                .and_then(default_system_prompt);
            if let (Some(system), false) = (&default, turns.iter().any(|(r, _)| *r == "system")) {
                turns.insert(0, ("system", system.as_str()));
            }
            match chat_turns(tok, &turns) {
                Ok((text, end_of_turn)) => {
                    stop_ids.push(end_of_turn);
                    (tok.encode(&text, false), "messages")
                }
                Err(e) => {
                    fail("messages", e.to_string());
                    return None;
                }
            }
        }
    };
    let prompt = match encoded {
        Ok(p) if p.is_empty() => {
            fail(param, "the prompt is empty".into());
            return None;
        }
        Ok(p) if p.len() > limits.max_prompt_tokens => {
            fail(
                param,
                format!(
                    "the prompt has {} tokens; this server takes at most {}",
                    p.len(),
                    limits.max_prompt_tokens
                ),
            );
            return None;
        }
        Ok(p) => p,
        Err(e) => {
            fail(param, e.to_string());
            return None;
        }
    };
    let steer = match steers.build(&job.steer, job.default_steer) {
        Ok(s) => s,
        Err(e) => {
            fail("steer", e.to_string());
            return None;
        }
    };
    let prompt_tokens = prompt.len();
    if job.ignore_eos {
        stop_ids.clear();
    }
    let request = SequenceRequest {
        prompt,
        max_new_tokens: job.max_tokens,
        sampling: job.sampling,
        stop_ids: stop_ids.clone(),
        steers: steer,
        steers_key: steers.key(&job.steer, job.default_steer),
    };
    let first = match engine.admit(id, request) {
        Ok(first) => first,
        Err(e) => {
            let _ = job.events.send(Event::Error(e.to_string()));
            return None;
        }
    };
    let now = Instant::now();
    metrics
        .time_to_first_token
        .observe(now.duration_since(job.arrived).as_secs_f64());
    metrics
        .prompt_tokens
        .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
    let _ = job.events.send(Event::Started { prompt_tokens });
    let live = Live {
        events: job.events,
        stop: job.stop,
        stop_ids,
        ids: Vec::new(),
        sent: 0,
        last_token_at: now,
    };
    Some((first, live))
}

/// Sends job `e.id` the text its new token completes, and finishes it on a
/// stop id, a stop string or its last token.
fn deliver(
    loaded: &LoadedModel,
    engine: &mut Engine,
    live: &mut HashMap<u64, Live>,
    e: Emitted,
    metrics: &Metrics,
) -> Result<()> {
    let Some(l) = live.get_mut(&e.id) else {
        return Ok(());
    };
    metrics.generation_tokens.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    if !l.ids.is_empty() {
        metrics
            .time_per_output_token
            .observe(now.duration_since(l.last_token_at).as_secs_f64());
    }
    l.last_token_at = now;
    let mut finish = e.finished.map(|r| r.as_str());
    let generated = l.ids.len() + 1;
    if !l.stop_ids.contains(&e.token) {
        l.ids.push(e.token);
        let text = match loaded.tokenizer.decode(&l.ids) {
            Ok(text) => text,
            Err(err) => {
                // This request fails; the others go on.
                if e.finished.is_none() {
                    engine.cancel(e.id)?;
                }
                if let Some(l) = live.remove(&e.id) {
                    metrics.finished("error");
                    let _ = l
                        .events
                        .send(Event::Error(format!("decoding the output: {err}")));
                }
                return Ok(());
            }
        };
        let stop_at = l.stop.iter().filter_map(|s| text.find(s.as_str())).min();
        let end = match stop_at {
            Some(at) => {
                finish = Some("stop");
                at
            }
            None if finish.is_some() => text.len(),
            // Hold back a partial character until its last token comes.
            None if text.ends_with('\u{FFFD}') => l.sent,
            // And what may be the start of a stop string.
            None => text.len() - stop_prefix_len(&text, &l.stop),
        };
        if end > l.sent {
            let _ = l.events.send(Event::Text(text[l.sent..end].to_string()));
            l.sent = end;
        }
    }
    if let Some(reason) = finish {
        if e.finished.is_none() {
            engine.cancel(e.id)?;
        }
        if let Some(l) = live.remove(&e.id) {
            done(&l.events, reason, generated, metrics);
        }
    }
    Ok(())
}

/// The length of the longest end of `text` that begins one of `stops`
/// (without being all of it).
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|stop| {
            (1..stop.len())
                .filter(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
                .max()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::stop_prefix_len;

    #[test]
    fn holds_back_what_may_start_a_stop_string() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(stop_prefix_len("a line\n", &stops), 1);
        assert_eq!(stop_prefix_len("and EN", &stops), 2);
        assert_eq!(stop_prefix_len("and E", &stops), 1);
        assert_eq!(stop_prefix_len("plain", &stops), 0);
        assert_eq!(stop_prefix_len("é", &["éa".to_string()]), 2);
    }
}
