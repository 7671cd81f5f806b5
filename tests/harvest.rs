//! Harvesting on the tiny Llama fixture: the store holds exactly what a direct
//! forward computes, several hooks share one pass, a killed harvest resumes to
//! an identical store, and the streaming source serves the same rows.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use saescope::data::harvest::store_dir;
use saescope::data::{
    harvest, ActivationSource, Corpus, HarvestConfig, Manifest, PackConfig, Packer, Share, Silent,
    Store, StoreDtype, StreamingSource,
};
use saescope::hooks::{ActivationCache, HookPoint, Hooks};
use saescope::model::{ForwardInput, LoadedModel, StopAt};
use tch::Tensor;

fn config(corpus: &Path, out: &Path, hooks: Vec<HookPoint>) -> HarvestConfig {
    HarvestConfig {
        corpus: corpus.to_string_lossy().into_owned(),
        text_field: "text".into(),
        hooks,
        tokens: 200,
        context: 16,
        batch: 3,
        dtype: StoreDtype::F32,
        skip_bos: false,
        seed: 0,
        shard_tokens: 80,
        resume: false,
        out: out.to_path_buf(),
    }
}

/// `[batch, seq, d]` activations of `hook` from a plain forward of `tokens`.
fn direct(model: &LoadedModel, hook: HookPoint, tokens: &Tensor) -> Tensor {
    let mut cache = ActivationCache::new([hook]);
    tch::no_grad(|| {
        model
            .model
            .forward(
                &ForwardInput::tokens(tokens),
                None,
                &mut Hooks::new().with(&mut cache),
                StopAt::After(hook),
            )
            .unwrap()
    });
    let act = cache.take(hook).unwrap();
    let (b, s) = (tokens.size()[0], tokens.size()[1]);
    act.reshape([b, s, -1])
}

/// Checks every shard of the store at `dir` against direct forwards of the
/// same windows, in the same batches, bit for bit.
fn check_against_direct(model: &LoadedModel, cfg: &HarvestConfig, hook: HookPoint, dir: &Path) {
    let store = Store::open(dir).unwrap();
    let m = store.manifest().clone();
    let corpus = Corpus::open(&cfg.corpus, "text").unwrap();
    let mut packer = Packer::new(
        &corpus,
        &model.tokenizer,
        PackConfig::for_tokenizer(&model.tokenizer, cfg.context),
    )
    .unwrap();
    let skip = usize::from(cfg.skip_bos);
    let mut all_rows = Vec::new();
    assert!(
        m.shards.len() >= 3,
        "the test wants several shards, got {}",
        m.shards.len()
    );
    for (i, entry) in m.shards.iter().enumerate() {
        assert_eq!(entry.first_window, packer.position());
        let windows = packer.next_windows(entry.windows as usize).unwrap();
        assert_eq!(windows.len() as u64, entry.windows);
        let shard = store.load_shard(i).unwrap();
        let mut expected = Vec::new();
        let mut expected_tokens = Vec::new();
        let mut expected_positions = Vec::new();
        for batch in windows.chunks(cfg.batch) {
            let ids: Vec<i64> = batch.iter().flat_map(|w| w.tokens.clone()).collect();
            let tokens = Tensor::from_slice(&ids).view([batch.len() as i64, cfg.context as i64]);
            let act = direct(model, hook, &tokens);
            let d = act.size()[2];
            expected.push(
                act.narrow(1, skip as i64, (cfg.context - skip) as i64)
                    .reshape([-1, d]),
            );
            for w in batch {
                assert_eq!(
                    w.tokens[0],
                    model.tokenizer.bos_id().unwrap(),
                    "every window starts with BOS"
                );
                for (p, &t) in w.tokens.iter().enumerate().skip(skip) {
                    expected_tokens.push(t as i32);
                    expected_positions.push(p as i32);
                }
            }
        }
        let expected = Tensor::cat(&expected, 0);
        assert_eq!(shard.acts.size(), expected.size());
        assert!(
            shard.acts.equal(&expected),
            "shard {i} of {hook} differs from a direct forward"
        );
        assert_eq!(
            Vec::<i32>::try_from(&shard.tokens).unwrap(),
            expected_tokens
        );
        assert_eq!(
            Vec::<i32>::try_from(&shard.positions).unwrap(),
            expected_positions
        );
        all_rows.push(shard.acts.to_kind(tch::Kind::Double));
    }
    // Normalisation statistics over every stored row.
    let all = Tensor::cat(&all_rows, 0);
    assert_eq!(all.size()[0] as u64, m.tokens);
    assert!(m.tokens >= cfg.tokens && m.tokens < cfg.tokens + m.rows_per_window());
    let mean =
        Vec::<f64>::try_from(all.mean_dim([0i64].as_slice(), false, tch::Kind::Double)).unwrap();
    let mean_norm = all
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, tch::Kind::Double)
        .sqrt()
        .mean(tch::Kind::Double)
        .double_value(&[]);
    assert!((m.stats.mean_norm - mean_norm).abs() < 1e-9 * mean_norm.abs().max(1.0));
    for (a, b) in m.stats.mean.iter().zip(mean) {
        assert!((a - b).abs() < 1e-9, "mean {a} vs {b}");
    }
}

#[test]
fn store_equals_direct_forward_bit_exact_for_several_hooks() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 200);
    let hooks = vec![HookPoint::resid_post(1), HookPoint::mlp_out(0)];
    let cfg = config(&corpus, &dir.path().join("store"), hooks.clone());
    let summary = harvest(&model, &cfg, &mut Silent).unwrap();
    assert_eq!(summary.stores.len(), 2);
    for &hook in &hooks {
        let sdir = store_dir(&cfg.out, &hooks, hook);
        assert!(sdir.ends_with(hook.to_string()));
        check_against_direct(&model, &cfg, hook, &sdir);
        let m = Store::open(&sdir).unwrap().manifest().clone();
        assert!(m.complete && !m.corpus_exhausted);
        assert_eq!(m.hook, hook.to_string());
        assert_eq!(m.d, 64);
    }
}

#[test]
fn skip_bos_leaves_out_position_zero() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 200);
    let mut cfg = config(
        &corpus,
        &dir.path().join("store"),
        vec![HookPoint::resid_post(0)],
    );
    cfg.skip_bos = true;
    harvest(&model, &cfg, &mut Silent).unwrap();
    let m = Store::open(&cfg.out).unwrap().manifest().clone();
    assert_eq!(m.rows_per_window(), 15);
    check_against_direct(&model, &cfg, HookPoint::resid_post(0), &cfg.out);
}

#[test]
fn low_precision_store_is_the_rounded_f32_activation() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 100);
    let hook = HookPoint::resid_post(1);
    let f32_cfg = config(&corpus, &dir.path().join("f32"), vec![hook]);
    let mut bf16_cfg = config(&corpus, &dir.path().join("bf16"), vec![hook]);
    bf16_cfg.dtype = StoreDtype::Bf16;
    harvest(&model, &f32_cfg, &mut Silent).unwrap();
    harvest(&model, &bf16_cfg, &mut Silent).unwrap();
    let a = Store::open(&f32_cfg.out)
        .unwrap()
        .load_shard(0)
        .unwrap()
        .acts;
    let b = Store::open(&bf16_cfg.out)
        .unwrap()
        .load_shard(0)
        .unwrap()
        .acts;
    assert_eq!(b.kind(), tch::Kind::BFloat16);
    assert!(b.equal(&a.to_kind(tch::Kind::BFloat16)));
}

#[test]
fn an_existing_store_is_refused_without_resume_and_settings_must_match() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 100);
    let mut cfg = config(
        &corpus,
        &dir.path().join("store"),
        vec![HookPoint::resid_post(0)],
    );
    harvest(&model, &cfg, &mut Silent).unwrap();
    let err = harvest(&model, &cfg, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    cfg.resume = true;
    cfg.context = 12;
    let err = harvest(&model, &cfg, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("context"), "{err}");
    // A complete store resumes to itself.
    cfg.context = 16;
    let before = Manifest::read(&cfg.out).unwrap();
    let summary = harvest(&model, &cfg, &mut Silent).unwrap();
    assert_eq!(summary.kept_shards, before.shards.len());
    assert_eq!(Manifest::read(&cfg.out).unwrap(), before);
}

#[test]
fn a_corpus_shorter_than_the_target_is_reported() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 5);
    let mut cfg = config(
        &corpus,
        &dir.path().join("store"),
        vec![HookPoint::resid_post(0)],
    );
    cfg.tokens = 100_000;
    let summary = harvest(&model, &cfg, &mut Silent).unwrap();
    assert!(summary.corpus_exhausted);
    let m = Manifest::read(&cfg.out).unwrap();
    assert!(m.complete && m.corpus_exhausted && m.tokens > 0 && m.tokens < 1000);
}

fn saescope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_saescope"))
}

fn harvest_args(corpus: &Path, out: &Path) -> Vec<String> {
    [
        "harvest",
        "--model",
        common::TINY_LLAMA,
        "--corpus",
        &corpus.to_string_lossy(),
        "--hook",
        "blocks.1.hook_resid_post",
        "--hook",
        "blocks.0.hook_attn_out",
        "--tokens",
        "3000",
        "--context",
        "32",
        "--batch",
        "4",
        "--shard-tokens",
        "256",
        "--threads",
        "1",
        "--out",
        &out.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn a_killed_harvest_resumes_to_an_identical_store() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 600);
    let whole = dir.path().join("whole");
    let cut = dir.path().join("cut");
    let status = saescope()
        .args(harvest_args(&corpus, &whole))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    // The same harvest, slowed down between shards and killed after the first.
    let mut child = saescope()
        .args(harvest_args(&corpus, &cut))
        .env("SAESCOPE_TEST_PAUSE_MS", "400")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = cut.join("blocks.1.hook_resid_post");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(m) = Manifest::read(&first) {
            if !m.shards.is_empty() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no shard appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the harvest ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = Manifest::read(&first).unwrap();
    assert!(!partial.complete);
    let total = Manifest::read(&whole.join("blocks.1.hook_resid_post"))
        .unwrap()
        .shards
        .len();
    assert!(
        partial.shards.len() < total,
        "{} of {total} shards before the kill",
        partial.shards.len()
    );
    // Leftovers of a write in progress: a partial tmp file and an unlisted shard.
    std::fs::write(first.join("shard-00007.safetensors.tmp"), b"partial").unwrap();
    std::fs::write(first.join("shard-00042.safetensors"), b"unlisted").unwrap();

    let output = saescope()
        .args(harvest_args(&corpus, &cut))
        .arg("--resume")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for hook in ["blocks.1.hook_resid_post", "blocks.0.hook_attn_out"] {
        let a = Manifest::read(&whole.join(hook)).unwrap();
        let b = Manifest::read(&cut.join(hook)).unwrap();
        assert!(a.complete && b.complete);
        assert_eq!(a, b, "manifests of {hook} differ");
        for entry in &a.shards {
            let x = std::fs::read(whole.join(hook).join(&entry.file)).unwrap();
            let y = std::fs::read(cut.join(hook).join(&entry.file)).unwrap();
            assert!(x == y, "{hook}/{} differs", entry.file);
        }
        let mut files: Vec<String> = std::fs::read_dir(cut.join(hook))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut expected: Vec<String> = a.shards.iter().map(|s| s.file.clone()).collect();
        expected.push("manifest.json".into());
        expected.sort();
        assert_eq!(files, expected, "stray files left in {hook}");
    }
    let verify = saescope()
        .args(["store", "verify"])
        .arg(&cut)
        .output()
        .unwrap();
    assert!(verify.status.success());
}

#[test]
fn streaming_source_serves_the_stored_rows_in_order() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus_path = common::write_corpus(dir.path(), 100);
    let hook = HookPoint::resid_post(1);
    let mut cfg = config(&corpus_path, &dir.path().join("store"), vec![hook]);
    cfg.shard_tokens = 48; // 3 windows per shard: one forward batch each
    cfg.tokens = 192; // 12 windows, 4 whole shards
    harvest(&model, &cfg, &mut Silent).unwrap();
    let store = Store::open(&cfg.out).unwrap();
    let corpus = Corpus::open(&cfg.corpus, "text").unwrap();
    let mut source = StreamingSource::new(&model, &corpus, hook, 16, 3, false, true).unwrap();
    assert_eq!(source.d(), 64);
    for i in 0..store.manifest().shards.len() {
        let shard = store.load_shard(i).unwrap();
        let batch = source.next_batch().unwrap().unwrap();
        assert!(batch.acts.equal(&shard.acts), "batch {i}");
        assert!(batch
            .tokens
            .unwrap()
            .equal(&shard.tokens.to_kind(tch::Kind::Int64)));
    }
}

#[test]
fn smollm2_harvest_of_the_default_corpus() {
    let model =
        saescope::model::load_model("smollm2-135m", tch::Device::Cpu, tch::Kind::Float).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hook = HookPoint::resid_post(2);
    let cfg = HarvestConfig {
        corpus: "default".into(),
        tokens: 62,
        context: 32,
        batch: 2,
        skip_bos: true,
        ..config(Path::new("unused"), dir.path(), vec![hook])
    };
    harvest(&model, &cfg, &mut Silent).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let m = store.manifest();
    assert_eq!(
        (m.d, m.tokens, m.windows, m.bos_token_id),
        (576, 62, 2, Some(1))
    );
    assert_eq!(
        m.model.sha256,
        saescope::io::atomic::sha256_file(&model.path).unwrap()
    );
    let shard = store.load_shard(0).unwrap();
    let tokens = Vec::<i32>::try_from(&shard.tokens).unwrap();
    assert!(!tokens.contains(&1), "BOS rows were left out");
    // The stored token ids are the tokenizer's ids of the corpus's first text.
    let first = Corpus::open("default", "text")
        .unwrap()
        .documents()
        .next()
        .unwrap()
        .unwrap();
    let ids = model.tokenizer.encode(&first.text, false).unwrap();
    let n = ids.len().min(31);
    assert_eq!(
        tokens[..n].iter().map(|&t| t as i64).collect::<Vec<_>>(),
        ids[..n]
    );
    assert!(m.stats.mean_norm > 0.0 && m.stats.mean_norm.is_finite());
}

#[test]
fn hooks_interrupted_between_their_shards_line_up_on_resume() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 200);
    let hooks = vec![HookPoint::resid_post(1), HookPoint::attn_out(0)];
    let whole = config(&corpus, &dir.path().join("whole"), hooks.clone());
    let mut cut = config(&corpus, &dir.path().join("cut"), hooks.clone());
    harvest(&model, &whole, &mut Silent).unwrap();
    harvest(&model, &cut, &mut Silent).unwrap();
    // As if killed after hook 0's third shard but before hook 1's.
    let dirs: Vec<_> = hooks
        .iter()
        .map(|&h| store_dir(&cut.out, &hooks, h))
        .collect();
    saescope::data::StoreWriter::resume(&dirs[0])
        .unwrap()
        .truncate(3)
        .unwrap();
    saescope::data::StoreWriter::resume(&dirs[1])
        .unwrap()
        .truncate(2)
        .unwrap();
    cut.resume = true;
    let summary = harvest(&model, &cut, &mut Silent).unwrap();
    assert_eq!(summary.kept_shards, 2);
    for &hook in &hooks {
        let a = store_dir(&whole.out, &hooks, hook);
        let b = store_dir(&cut.out, &hooks, hook);
        let (ma, mb) = (Manifest::read(&a).unwrap(), Manifest::read(&b).unwrap());
        assert_eq!(ma, mb, "{hook}");
        for entry in &ma.shards {
            assert!(
                std::fs::read(a.join(&entry.file)).unwrap()
                    == std::fs::read(b.join(&entry.file)).unwrap()
            );
        }
    }
    // Stores further apart than one shard are not lined up silently.
    saescope::data::StoreWriter::resume(&dirs[1])
        .unwrap()
        .truncate(0)
        .unwrap();
    let err = harvest(&model, &cut, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("same hooks"), "{err}");
}

/// Records the observer's calls, checking that a shard is reported only once
/// its manifest lists it.
struct Recorder {
    dir: std::path::PathBuf,
    started: Option<(u64, u64)>,
    advanced: u64,
    written: Vec<(usize, u64)>,
}

impl saescope::data::HarvestObserver for Recorder {
    fn started(&mut self, target_rows: u64, done_rows: u64) {
        self.started = Some((target_rows, done_rows));
    }
    fn advanced(&mut self, rows: u64) {
        self.advanced += rows;
    }
    fn shard_written(&mut self, index: usize, rows: u64) {
        let m = Manifest::read(&self.dir).unwrap();
        assert!(
            m.shards.len() > index,
            "shard {index} reported before it was listed"
        );
        assert_eq!(m.shards[index].rows, rows);
        self.written.push((index, rows));
    }
}

#[test]
fn the_observer_hears_of_every_batch_and_of_each_shard_once_listed() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 200);
    let cfg = config(
        &corpus,
        &dir.path().join("store"),
        vec![HookPoint::resid_post(0)],
    );
    let mut recorder = Recorder {
        dir: cfg.out.clone(),
        started: None,
        advanced: 0,
        written: Vec::new(),
    };
    let summary = harvest(&model, &cfg, &mut recorder).unwrap();
    let m = Manifest::read(&cfg.out).unwrap();
    assert_eq!(recorder.started, Some((m.tokens, 0)));
    assert_eq!(recorder.advanced, m.tokens);
    let listed: Vec<(usize, u64)> = m.shards.iter().map(|s| s.rows).enumerate().collect();
    assert_eq!(recorder.written, listed);
    assert!(summary.forward_secs > 0.0);
}

#[test]
fn a_failed_shard_write_is_reported_and_the_store_resumes_to_the_same() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 200);
    let hook = HookPoint::resid_post(1);
    let whole = config(&corpus, &dir.path().join("whole"), vec![hook]);
    harvest(&model, &whole, &mut Silent).unwrap();
    let mut cut = config(&corpus, &dir.path().join("cut"), vec![hook]);
    // The second shard cannot be written: its temporary path is a folder.
    let blocker = cut.out.join("shard-00001.safetensors.tmp");
    std::fs::create_dir_all(&blocker).unwrap();
    let err = harvest(&model, &cut, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("shard-00001.safetensors.tmp"), "{err}");
    let partial = Manifest::read(&cut.out).unwrap();
    assert_eq!(partial.shards.len(), 1);
    assert!(!partial.complete);
    assert!(Store::open(&cut.out).unwrap().verify().is_empty());
    std::fs::remove_dir(&blocker).unwrap();
    cut.resume = true;
    harvest(&model, &cut, &mut Silent).unwrap();
    let m = Manifest::read(&whole.out).unwrap();
    assert_eq!(Manifest::read(&cut.out).unwrap(), m);
    for entry in &m.shards {
        assert!(
            std::fs::read(whole.out.join(&entry.file)).unwrap()
                == std::fs::read(cut.out.join(&entry.file)).unwrap()
        );
    }
}

#[test]
fn a_corpus_error_mid_harvest_is_reported_and_keeps_whole_shards() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let mut text = common::corpus_text(60).into_bytes();
    text.extend_from_slice(b"\n\nnot \xff UTF-8\n");
    std::fs::write(&corpus, text).unwrap();
    let mut cfg = config(
        &corpus,
        &dir.path().join("store"),
        vec![HookPoint::resid_post(0)],
    );
    cfg.tokens = 100_000;
    let err = harvest(&model, &cfg, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("UTF-8"), "{err}");
    let m = Manifest::read(&cfg.out).unwrap();
    assert!(!m.complete && !m.shards.is_empty());
    assert_eq!(m.tokens, m.shards.iter().map(|s| s.rows).sum::<u64>());
    assert!(Store::open(&cfg.out).unwrap().verify().is_empty());
    let names: Vec<String> = std::fs::read_dir(&cfg.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), m.shards.len() + 1, "stray files: {names:?}");
}

#[test]
fn streaming_shares_serve_disjoint_windows_that_interleave_to_the_whole_stream() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus_path = common::write_corpus(dir.path(), 100);
    let corpus = Corpus::open(corpus_path.to_str().unwrap(), "text").unwrap();
    let hook = HookPoint::resid_post(1);
    // Token ids of the first `windows` windows (16 tokens each, one per batch).
    let tokens = |share: Share, windows: usize, skip: u64| -> Vec<Vec<i64>> {
        let mut source = StreamingSource::new(&model, &corpus, hook, 16, 1, false, true)
            .unwrap()
            .with_share(share);
        source.skip_windows(skip).unwrap();
        (0..windows)
            .map(|_| {
                let batch = source.next_batch().unwrap().unwrap();
                Vec::<i64>::try_from(batch.tokens.unwrap()).unwrap()
            })
            .collect()
    };
    let whole = tokens(Share::WHOLE, 9, 0);
    let shares: Vec<Vec<Vec<i64>>> = (0..3)
        .map(|i| tokens(Share::new(i, 3).unwrap(), 3, 0))
        .collect();
    for (w, window) in whole.iter().enumerate() {
        assert_eq!(window, &shares[w % 3][w / 3], "window {w}");
    }
    // Skipping a share's first window (a resume) lands on its second.
    let resumed = tokens(Share::new(1, 3).unwrap(), 1, 1);
    assert_eq!(resumed[0], whole[4]);
}
