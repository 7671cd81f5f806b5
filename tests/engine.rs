//! The continuous-batching engine: a sequence alone gives the tokens of the
//! lockstep `generate`, and sequences that join and leave a running batch,
//! each with its own steer and sampling, give the tokens they get alone, on
//! the fused decode path and on the libtorch one, through cache moves.

use saescope::hooks::{Blend, HookPoint, Hooks, Intervention, Shared};
use saescope::model::generate::engine::{
    generate_sequence, Engine, EngineConfig, FinishReason, SequenceRequest,
};
use saescope::model::{generate, load_model, GenerateConfig, SamplingConfig, Transformer};
use saescope::steer::kinds::vector::SteeringVector;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

fn load(name: &str, kind: Kind) -> Transformer {
    let path = format!("{}/tests/fixtures/tiny/{name}", env!("CARGO_MANIFEST_DIR"));
    load_model(&path, Device::Cpu, kind).unwrap().model
}

/// A steering vector at every block's residual stream (values from `seed`
/// without libtorch's global generator, which tests share across threads).
fn vector(model: &Transformer, seed: i64) -> SteeringVector {
    let (n, d) = (model.config().n_layers, model.config().d_model);
    let sites = (0..n).map(HookPoint::resid_post).collect();
    let values: Vec<f32> = (0..n as i64 * d)
        .map(|i| 2.0 * ((i * 7919 + seed * 104_729) as f32 * 0.618).sin())
        .collect();
    let v = Tensor::from_slice(&values).view([n as i64, d]);
    SteeringVector::new(sites, v, 1.0).unwrap()
}

fn sampling(temperature: f64, seed: u64) -> SamplingConfig {
    SamplingConfig {
        temperature,
        top_k: 0,
        top_p: 0.9,
        seed,
    }
}

fn prompt(len: usize, salt: i64, vocab: i64) -> Vec<i64> {
    (0..len as i64)
        .map(|i| (i * 37 + salt * 11 + 3) % vocab)
        .collect()
}

/// One planned request: when it arrives (engine step), and what it asks.
struct Plan {
    arrives: usize,
    prompt: Vec<i64>,
    max_new: usize,
    sampling: SamplingConfig,
    /// Steering: none, the vector, or the vector at half strength.
    steer: Option<f64>,
    cancel_after: Option<usize>,
}

fn request(plan: &Plan, steer: &Shared<SteeringVector>) -> SequenceRequest {
    let steers: Vec<Box<dyn Intervention>> = match plan.steer {
        None => Vec::new(),
        Some(1.0) => vec![Box::new(steer.clone())],
        Some(w) => vec![Box::new(Blend {
            weight: w,
            inner: steer.clone(),
        })],
    };
    SequenceRequest {
        prompt: plan.prompt.clone(),
        max_new_tokens: plan.max_new,
        sampling: plan.sampling,
        stop_ids: vec![],
        steers,
        // Requests with the shared steer at the same strength share its
        // application in a step.
        steers_key: plan.steer.map(|w| vec![(0, w.to_bits())]),
    }
}

/// Runs the plans through one engine: tokens per plan, and how often the
/// rows moved within the cache.
fn batched(model: &Transformer, plans: &[Plan], config: EngineConfig) -> (Vec<Vec<i64>>, u64) {
    let steer = Shared(Rc::new(RefCell::new(vector(model, 5))));
    let mut engine = Engine::new(model, config).unwrap();
    let mut out = vec![Vec::new(); plans.len()];
    let mut waiting: Vec<usize> = (0..plans.len()).collect();
    let mut live: HashMap<u64, usize> = HashMap::new();
    for step in 0..200 {
        waiting.retain(|&i| {
            if plans[i].arrives > step || !engine.has_room() {
                return true;
            }
            let first = engine.admit(i as u64, request(&plans[i], &steer)).unwrap();
            out[i].push(first.token);
            if first.finished.is_none() {
                live.insert(i as u64, i);
            }
            false
        });
        for e in engine.step().unwrap() {
            let i = live[&e.id];
            out[i].push(e.token);
            if e.finished.is_some() {
                live.remove(&e.id);
            } else if plans[i].cancel_after == Some(out[i].len()) {
                assert!(engine.cancel(e.id).unwrap());
                live.remove(&e.id);
            }
        }
        if waiting.is_empty() && live.is_empty() {
            return (out, engine.cache_moves());
        }
    }
    panic!("the plans did not finish");
}

fn plans(vocab: i64) -> Vec<Plan> {
    let plan = |arrives, len, max_new, sampling, steer, cancel_after| Plan {
        arrives,
        prompt: prompt(len, arrives as i64 + len as i64, vocab),
        max_new,
        sampling,
        steer,
        cancel_after,
    };
    vec![
        plan(0, 5, 14, sampling(0.0, 0), None, None),
        plan(2, 9, 11, sampling(0.0, 0), Some(1.0), None),
        plan(3, 3, 14, sampling(0.8, 5), Some(0.5), None),
        plan(3, 4, 10, sampling(0.0, 0), Some(1.0), Some(3)),
        // Arrives while the batch is full; waits for a free row.
        plan(4, 7, 13, sampling(1.0, 9), None, None),
        plan(6, 2, 9, sampling(0.0, 0), Some(1.0), None),
        plan(12, 6, 14, sampling(0.7, 3), None, None),
        // Late: by now the cache is full and the rows move left.
        plan(20, 4, 16, sampling(0.0, 0), Some(1.0), None),
    ]
}

#[test]
fn sequences_joining_and_leaving_a_batch_get_their_own_tokens() {
    for (name, kind) in [
        ("llama", Kind::Float),
        ("llama", Kind::BFloat16),
        ("qwen2", Kind::Float),
        ("gpt2", Kind::Float),
        // GELU with erf: every step on the libtorch path, masked.
        ("neox", Kind::Float),
    ] {
        let model = load(name, kind);
        let plans = plans(model.config().vocab_size);
        // Context 20 in a cache of 40: the rows move right for long prompts
        // and left when the cache is full.
        let config = EngineConfig {
            max_sequences: 4,
            max_context: 20,
        };
        let (together, moves) = batched(&model, &plans, config);
        assert!(moves >= 2, "{name}: the rows moved {moves} times");
        for (i, plan) in plans.iter().enumerate() {
            let steer = Shared(Rc::new(RefCell::new(vector(&model, 5))));
            let (mut alone, _) = generate_sequence(&model, request(plan, &steer), |_| {}).unwrap();
            if let Some(n) = plan.cancel_after {
                alone.truncate(n);
            }
            assert_eq!(together[i], alone, "{name} {kind:?}: request {i}");
            assert_eq!(together[i].len(), plan.cancel_after.unwrap_or(plan.max_new));
        }
        // The steer changes what the steered requests say.
        let p = &plans[1];
        let unsteered = Plan {
            arrives: 0,
            prompt: p.prompt.clone(),
            max_new: p.max_new,
            sampling: p.sampling,
            steer: None,
            cancel_after: None,
        };
        let steer = Shared(Rc::new(RefCell::new(vector(&model, 5))));
        let (plain, _) = generate_sequence(&model, request(&unsteered, &steer), |_| {}).unwrap();
        assert_ne!(plain, together[1], "{name} {kind:?}: the steer did nothing");
    }
}

#[test]
fn a_sequence_alone_gives_the_tokens_of_generate() {
    for (name, kind) in [
        ("llama", Kind::Float),
        ("llama", Kind::BFloat16),
        ("gpt2", Kind::Float),
        ("neox", Kind::Float),
    ] {
        let model = load(name, kind);
        let prompt = prompt(6, 1, model.config().vocab_size);
        for sampling in [sampling(0.0, 0), sampling(0.9, 4)] {
            let config = GenerateConfig {
                max_new_tokens: 12,
                sampling,
                stop_ids: vec![],
            };
            let mut steer = vector(&model, 2);
            let lockstep = generate(
                &model,
                std::slice::from_ref(&prompt),
                &config,
                &mut Hooks::new().with(&mut steer),
                |_, _| {},
            )
            .unwrap();
            let request = SequenceRequest {
                prompt: prompt.clone(),
                max_new_tokens: 12,
                sampling,
                stop_ids: vec![],
                steers: vec![Box::new(vector(&model, 2))],
                steers_key: None,
            };
            let mut streamed = Vec::new();
            let (tokens, reason) =
                generate_sequence(&model, request, |t| streamed.push(t)).unwrap();
            assert_eq!(tokens, lockstep[0], "{name} {kind:?} {sampling:?}");
            assert_eq!(streamed, tokens);
            assert_eq!(reason, FinishReason::Length);
        }
        // A stop id ends the sequence with reason "stop", the id kept.
        let request = |stop_ids| SequenceRequest {
            prompt: prompt.clone(),
            max_new_tokens: 12,
            sampling: sampling(0.0, 0),
            stop_ids,
            steers: vec![],
            steers_key: None,
        };
        let (all, _) = generate_sequence(&model, request(vec![]), |_| {}).unwrap();
        let (stopped, reason) = generate_sequence(&model, request(vec![all[3]]), |_| {}).unwrap();
        let first = all.iter().position(|t| *t == all[3]).unwrap();
        assert_eq!(stopped, all[..=first]);
        assert_eq!(reason, FinishReason::Stop);
    }
}

#[test]
fn the_engine_refuses_what_does_not_fit() {
    let model = load("llama", Kind::Float);
    let config = EngineConfig {
        max_sequences: 1,
        max_context: 10,
    };
    let mut engine = Engine::new(&model, config).unwrap();
    let ask = |len, max_new| SequenceRequest {
        prompt: vec![1; len],
        max_new_tokens: max_new,
        sampling: sampling(0.0, 0),
        stop_ids: vec![],
        steers: vec![],
        steers_key: None,
    };
    for (len, max_new, why) in [
        (8, 3, "exceed the context of 10"),
        (0, 3, "needs a prompt"),
        (3, 0, "at least one new token"),
    ] {
        let err = engine.admit(0, ask(len, max_new)).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    engine.admit(1, ask(3, 5)).unwrap();
    let err = engine.admit(2, ask(3, 5)).unwrap_err().to_string();
    assert!(err.contains("already runs 1"), "{err}");
    assert!(!engine.cancel(7).unwrap() && engine.cancel(1).unwrap());
    assert_eq!(engine.running(), 0);
    assert!(engine.step().unwrap().is_empty());
    let longer = model.config().max_context as usize + 1;
    let err = Engine::new(
        &model,
        EngineConfig {
            max_sequences: 1,
            max_context: longer,
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("longer than the model"), "{err}");
}
