//! Runtime measurements used by `saescope bench runtime`: forward and
//! generation throughput, and the two machine limits they are judged
//! against (matmul rate, weight-streaming bandwidth), measured in the same run.

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::hooks::{HookPoint, Hooks};
use crate::model::cpu::decode_step::weight_slice;
use crate::model::cpu::gemv::WeightSlice;
use crate::model::cpu::team::{self, Readers};
use crate::model::layers::linear::linear;
use crate::model::{
    generate, ForwardInput, GenerateConfig, LogitsFor, SamplingConfig, StopAt, Transformer,
};

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
    /// Batch-1 decode steps alone (after the first new token), tokens/s.
    pub generate_b1_decode_tps: f64,
    /// Batch-1 generation's share of the bandwidth limit, paired in time:
    /// the median over rounds of each round's tokens/s (end to end) against
    /// the limit from the probes timed just before and just after it.
    pub generate_b1_share_paired: f64,
    /// The same for the decode steps alone, which the limit bounds.
    pub generate_b1_decode_share_paired: f64,
    /// Each round's `[tokens/s end to end, decode steps' tokens/s, limit
    /// tokens/s]`.
    pub generate_b1_rounds: Vec<[f64; 3]>,
    /// Bytes of weights one decode step streams.
    pub weight_bytes: f64,
    pub flops_per_token_full: f64,
    pub flops_per_token_l8: f64,
}

/// Best (shortest) of `repeats` timings of `f` after one warm-up, in seconds.
/// The minimum is the least disturbed by other tenants of a shared machine;
/// the Python baseline is timed the same way.
fn best_seconds(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn random_tokens(model: &Transformer, batch: i64, seq: i64) -> Tensor {
    tch::manual_seed(0);
    Tensor::randint(
        model.config().vocab_size,
        [batch, seq],
        (Kind::Int64, model.device()),
    )
}

/// Tokens per second of a batched forward, to the logits or stopping after a hook.
pub fn forward_throughput(
    model: &Transformer,
    cfg: &RuntimeBenchConfig,
    stop: StopAt,
) -> Result<f64> {
    let tokens = random_tokens(model, cfg.batch, cfg.seq);
    let secs = best_seconds(cfg.repeats, || {
        tch::no_grad(|| {
            model.forward(
                &ForwardInput::tokens(&tokens),
                None,
                &mut Hooks::new(),
                stop,
            )
        })?;
        Ok(())
    })?;
    Ok((cfg.batch * cfg.seq) as f64 / secs)
}

/// Greedy generation for `batch` prompts, best of `cfg.repeats` after a
/// warm-up: new tokens per second end to end (the prompt's forward
/// included), and of the decode steps alone (after the first new token, as
/// llama.cpp's `tg` and vLLM's time per output token count them), which is
/// what streaming the weights bounds.
pub fn generate_rates(
    model: &Transformer,
    cfg: &RuntimeBenchConfig,
    batch: i64,
) -> Result<(f64, f64)> {
    let tokens = Vec::<i64>::try_from(random_tokens(model, batch, cfg.prompt_len).view([-1]))?;
    let prompts: Vec<Vec<i64>> = tokens
        .chunks(cfg.prompt_len as usize)
        .map(<[i64]>::to_vec)
        .collect();
    let gen = GenerateConfig {
        max_new_tokens: cfg.new_tokens,
        sampling: SamplingConfig::default(),
        stop_ids: Vec::new(),
    };
    let timed = || -> Result<(f64, f64)> {
        let start = Instant::now();
        let mut first = None;
        generate(model, &prompts, &gen, &mut Hooks::new(), |_, _| {
            first.get_or_insert_with(Instant::now);
        })?;
        let end = Instant::now();
        let decoding = first.map_or(0.0, |f| (end - f).as_secs_f64());
        Ok(((end - start).as_secs_f64(), decoding))
    };
    timed()?;
    let (mut whole, mut decoding) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..cfg.repeats.max(1) {
        let (w, d) = timed()?;
        whole = whole.min(w);
        decoding = decoding.min(d);
    }
    let rows = batch as usize;
    Ok((
        (rows * cfg.new_tokens) as f64 / whole,
        (rows * cfg.new_tokens.saturating_sub(1)) as f64 / decoding,
    ))
}

/// GFLOP/s of a 2048×2048 matmul in `kind`: the faster of libtorch's
/// `matmul` and the path the model's dense layers take ([`linear`], oneDNN
/// for f32 on the CPU, where libtorch's `matmul` goes to MKL).
pub fn matmul_gflops(kind: Kind, device: Device, repeats: usize) -> Result<f64> {
    let n = 2048;
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let secs = tch::no_grad(|| {
        let plain = best_seconds(repeats.max(3), || {
            let _ = a.matmul(&b);
            Ok(())
        })?;
        let layer = best_seconds(repeats.max(3), || {
            let _ = linear(&a, &b, None);
            Ok(())
        })?;
        Ok::<_, Error>(plain.min(layer))
    })?;
    Ok(2.0 * (n * n * n) as f64 / secs / 1e9)
}

/// Streams `bytes` of weights through matrix–vector products, the way one
/// decode step reads them: its rate is the bandwidth limit of batch-1
/// generation. Both libtorch's `linear` and the fused decode step's own
/// products ([`team::Team::product`]) stream the same matrices, and the
/// faster sets the limit. Each
/// timing sweeps the weights as many times as a generation run decodes
/// tokens, so that the limit is a rate sustained as long as the run it
/// judges, not a burst of a few milliseconds on a shared machine.
pub struct GemvProbe {
    /// Eight matrices, so that no single one stays in cache between passes.
    weights: Vec<Tensor>,
    x: Tensor,
    element_bytes: f64,
}

impl GemvProbe {
    pub fn new(kind: Kind, device: Device, d_in: i64, bytes: f64) -> Self {
        let element_bytes = if kind == Kind::Float { 4.0 } else { 2.0 };
        let rows = ((bytes / element_bytes / d_in as f64) / 8.0).ceil() as i64;
        GemvProbe {
            weights: (0..8)
                .map(|_| Tensor::ones([rows, d_in], (kind, device)))
                .collect(),
            x: Tensor::ones([1, d_in], (kind, device)),
            element_bytes,
        }
    }

    /// GB/s of the best of `repeats` timings of `sweeps` passes over the
    /// weights, through libtorch and through the fused step's team (where the
    /// weights are f32 or bf16 on the CPU).
    pub fn gbps(&self, repeats: usize, sweeps: usize) -> Result<f64> {
        let bytes: i64 = self.weights.iter().map(|w| w.numel() as i64).sum();
        let rate = |secs: f64| (bytes as f64 * sweeps as f64) * self.element_bytes / secs / 1e9;
        let libtorch = best_seconds(repeats, || {
            for _ in 0..sweeps {
                for w in &self.weights {
                    let _ = self.x.linear::<Tensor>(w, None);
                }
            }
            Ok(())
        })?;
        let slices: Vec<WeightSlice> =
            match self.weights.iter().map(weight_slice).collect::<Result<_>>() {
                Ok(slices) => slices,
                Err(_) => return Ok(rate(libtorch)),
            };
        let x = vec![1f32; self.x.numel()];
        let widest = slices.iter().map(|w| w.len() / x.len()).max().unwrap_or(0);
        // As the fused decode step streams a token's weights: one team for all
        // the products of a sweep.
        let ours = best_seconds(repeats, || {
            for _ in 0..sweeps {
                team::run(widest, |team| {
                    for w in &slices {
                        team.product(&x, 1, *w, None, Readers::Leader);
                    }
                });
            }
            Ok(())
        })?;
        Ok(rate(libtorch.min(ours)))
    }
}

/// Runs every measurement. Batch-1 generation and the bandwidth probe are
/// timed in alternation (probe, generation, probe, …), so that each
/// generation round is judged against the machine's bandwidth of the same
/// moment: a shared machine's bandwidth drifts by ±30% between minutes.
pub fn runtime_bench(model: &Transformer, cfg: &RuntimeBenchConfig) -> Result<RuntimeBenchReport> {
    let c = model.config();
    let kind = model.kind();
    let element = if kind == Kind::Float { 4.0 } else { 2.0 };
    let weight_bytes = c.streamed_parameters() as f64 * element;
    let stop = StopAt::After(HookPoint::resid_post(cfg.stop_layer));
    let once = RuntimeBenchConfig {
        repeats: 1,
        ..cfg.clone()
    };
    let probe = GemvProbe::new(kind, model.device(), c.d_model, weight_bytes);
    let limit_tps = |gbps: f64| gbps * 1e9 / weight_bytes;
    let mut probes = vec![probe.gbps(1, cfg.new_tokens)?];
    let mut rounds = Vec::new();
    for _ in 0..cfg.repeats.max(3) + 2 {
        let (tps, decode_tps) = generate_rates(model, &once, 1)?;
        probes.push(probe.gbps(1, cfg.new_tokens)?);
        let around = (probes[probes.len() - 2] + probes[probes.len() - 1]) / 2.0;
        rounds.push([tps, decode_tps, limit_tps(around)]);
    }
    let median_share = |rate: usize| {
        let mut shares: Vec<f64> = rounds.iter().map(|r| r[rate] / r[2]).collect();
        shares.sort_by(f64::total_cmp);
        shares[shares.len() / 2]
    };
    let (generate_b1_share_paired, generate_b1_decode_share_paired) =
        (median_share(0), median_share(1));
    let best = |rate: usize| rounds.iter().map(|r| r[rate]).fold(0.0, f64::max);
    let (generate_b1_tps, generate_b1_decode_tps) = (best(0), best(1));
    let gemv = probes.iter().copied().fold(0.0, f64::max);
    Ok(RuntimeBenchReport {
        dtype: format!("{kind:?}"),
        threads: tch::get_num_threads(),
        config: cfg.clone(),
        forward_full_tps: forward_throughput(model, cfg, StopAt::Logits(LogitsFor::All))?,
        forward_l8_tps: forward_throughput(model, cfg, stop)?,
        generate_b1_tps,
        generate_b1_decode_tps,
        generate_b8_tps: generate_rates(model, cfg, 8)?.0,
        matmul_gflops: matmul_gflops(kind, model.device(), cfg.repeats)?,
        gemv_gbps: gemv,
        generate_b1_share_paired,
        generate_b1_decode_share_paired,
        generate_b1_rounds: rounds,
        weight_bytes,
        flops_per_token_full: c.flops_per_token(c.n_layers, cfg.seq, true),
        flops_per_token_l8: c.flops_per_token(cfg.stop_layer + 1, cfg.seq, false),
    })
}
