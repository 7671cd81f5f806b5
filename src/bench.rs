//! Runtime measurements used by `saescope bench runtime`: forward and
//! generation throughput, and the two machine limits they are judged
//! against (matmul rate, weight-streaming bandwidth), measured in the same run.

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::hooks::{HookPoint, Hooks};
use crate::model::{generate, ForwardInput, GenerateConfig, LogitsFor, SamplingConfig, StopAt, Transformer};

/// Shapes of the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeBenchConfig {
    pub batch: i64,
    pub seq: i64,
    /// The forward that stops early ends after this block's `hook_resid_post`.
    pub stop_layer: usize,
    pub prompt_len: i64,
    pub new_tokens: usize,
    pub repeats: usize,
}

impl Default for RuntimeBenchConfig {
    fn default() -> Self {
        RuntimeBenchConfig {
            batch: 8,
            seq: 256,
            stop_layer: 8,
            prompt_len: 16,
            new_tokens: 64,
            repeats: 3,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeBenchReport {
    pub dtype: String,
    pub threads: i32,
    pub config: RuntimeBenchConfig,
    pub forward_full_tps: f64,
    pub forward_l8_tps: f64,
    pub generate_b1_tps: f64,
    pub generate_b8_tps: f64,
    pub matmul_gflops: f64,
    pub gemv_gbps: f64,
    /// Bytes of weights one decode step streams.
    pub weight_bytes: f64,
    pub flops_per_token_full: f64,
    pub flops_per_token_l8: f64,
}

/// Median of `repeats` timings of `f` after one warm-up, in seconds.
fn median_seconds(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn random_tokens(model: &Transformer, batch: i64, seq: i64) -> Tensor {
    tch::manual_seed(0);
    Tensor::randint(model.config().vocab_size, [batch, seq], (Kind::Int64, model.device()))
}

/// Tokens per second of a batched forward, to the logits or stopping after a hook.
pub fn forward_throughput(model: &Transformer, cfg: &RuntimeBenchConfig, stop: StopAt) -> Result<f64> {
    let tokens = random_tokens(model, cfg.batch, cfg.seq);
    let secs = median_seconds(cfg.repeats, || {
        tch::no_grad(|| model.forward(&ForwardInput::tokens(&tokens), None, &mut Hooks::new(), stop))?;
        Ok(())
    })?;
    Ok((cfg.batch * cfg.seq) as f64 / secs)
}

/// New tokens per second of greedy generation for `batch` prompts.
pub fn generate_throughput(model: &Transformer, cfg: &RuntimeBenchConfig, batch: i64) -> Result<f64> {
    let tokens = Vec::<i64>::try_from(random_tokens(model, batch, cfg.prompt_len).view([-1]))?;
    let prompts: Vec<Vec<i64>> = tokens.chunks(cfg.prompt_len as usize).map(<[i64]>::to_vec).collect();
    let gen = GenerateConfig {
        max_new_tokens: cfg.new_tokens,
        sampling: SamplingConfig::default(),
        stop_ids: Vec::new(),
    };
    let secs = median_seconds(cfg.repeats, || {
        generate(model, &prompts, &gen, &mut Hooks::new(), |_, _| {})?;
        Ok(())
    })?;
    Ok((batch as usize * cfg.new_tokens) as f64 / secs)
}

/// GFLOP/s of a 2048×2048 matmul in `kind`.
pub fn matmul_gflops(kind: Kind, device: Device, repeats: usize) -> Result<f64> {
    let n = 2048;
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let secs = median_seconds(repeats.max(3), || {
        let _ = a.matmul(&b);
        Ok(())
    })?;
    Ok(2.0 * (n * n * n) as f64 / secs / 1e9)
}

/// GB/s of streaming `bytes` of weights through matrix–vector products, the
/// way one decode step reads them: the bandwidth limit of batch-1 generation.
pub fn gemv_gbps(kind: Kind, device: Device, d_in: i64, bytes: f64, repeats: usize) -> Result<f64> {
    let element = match kind {
        Kind::Float => 4.0,
        _ => 2.0,
    };
    // Eight matrices, so no single one stays in cache between repeats.
    let rows = ((bytes / element / d_in as f64) / 8.0).ceil() as i64;
    let weights: Vec<Tensor> = (0..8).map(|_| Tensor::randn([rows, d_in], (kind, device))).collect();
    let x = Tensor::randn([1, d_in], (kind, device));
    let secs = median_seconds(repeats.max(3), || {
        for w in &weights {
            let _ = x.linear::<Tensor>(w, None);
        }
        Ok(())
    })?;
    Ok((8 * rows * d_in) as f64 * element / secs / 1e9)
}

/// Runs every measurement.
pub fn runtime_bench(model: &Transformer, cfg: &RuntimeBenchConfig) -> Result<RuntimeBenchReport> {
    let c = model.config();
    let kind = model.kind();
    let element = if kind == Kind::Float { 4.0 } else { 2.0 };
    let weight_bytes = c.streamed_parameters() as f64 * element;
    let stop = StopAt::After(HookPoint::resid_post(cfg.stop_layer));
    Ok(RuntimeBenchReport {
        dtype: format!("{kind:?}"),
        threads: tch::get_num_threads(),
        config: cfg.clone(),
        forward_full_tps: forward_throughput(model, cfg, StopAt::Logits(LogitsFor::All))?,
        forward_l8_tps: forward_throughput(model, cfg, stop)?,
        generate_b1_tps: generate_throughput(model, cfg, 1)?,
        generate_b8_tps: generate_throughput(model, cfg, 8)?,
        matmul_gflops: matmul_gflops(kind, model.device(), cfg.repeats)?,
        gemv_gbps: gemv_gbps(kind, model.device(), c.d_model, weight_bytes, cfg.repeats)?,
        weight_bytes,
        flops_per_token_full: c.flops_per_token(c.n_layers, cfg.seq, true),
        flops_per_token_l8: c.flops_per_token(cfg.stop_layer + 1, cfg.seq, false),
    })
}
