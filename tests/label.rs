//! Feature labelling on the tiny Llama fixture: MI corrects the frequency
//! bias of the logit-lens baseline, the streaming pass finds exactly the
//! contexts a brute-force sort finds, model-written labels land in the
//! entries, and bad input (feature index, SAE width, vocabulary file) gives
//! clear errors, through the library and the CLI.

mod common;

use std::path::Path;

use common::saescope;
use saescope::data::{harvest, HarvestConfig, Silent, Store, StoreDtype};
use saescope::hooks::HookPoint;
use saescope::label::llm::LabelFn;
use saescope::label::stats::logit_lens::logit_lens;
use saescope::label::stats::mi::explain;
use saescope::label::{
    build_dictionary, save_dictionary, ActivationInput, BuiltDictionary, CheckpointConfig,
    Dictionary, LabelConfig, LabelInputs, LabelProgress, MiConfig, StatsConfig, Vocabulary,
    VocabularyConfig,
};
use saescope::model::LoadedModel;
use saescope::sae::{save_sae, Sae, SaeConfig};
use tch::{Device, Kind, Tensor};

/// Four features along the axes. Word A is close to every feature (a
/// frequent, generic word), word B to feature 1 only, weaker than A; the
/// other words are small noise.
#[test]
fn mi_explains_a_feature_by_its_specific_word_where_the_baseline_picks_the_generic_one() {
    let d = 6;
    let features = Tensor::eye(d, (Kind::Float, Device::Cpu)).narrow(0, 0, 4);
    let mut rows: Vec<Tensor> = Vec::new();
    let generic = Tensor::from_slice(&[2.0f32, 2.0, 2.0, 2.0, 0.0, 0.0]);
    let specific = Tensor::from_slice(&[0.0f32, 1.5, 0.0, 0.0, 0.0, 0.0]);
    rows.push(generic);
    rows.push(specific);
    let names: Vec<String> = ["generic", "specific"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..20).map(|i| format!("filler{i}")))
        .collect();
    for i in 0..20 {
        let mut v = [0f32; 6];
        v[4] = 0.1 * (i as f32 - 10.0) / 10.0;
        v[5] = 0.05 * ((i * 7 % 20) as f32 - 10.0) / 10.0;
        rows.push(Tensor::from_slice(&v));
    }
    let words = Tensor::stack(&rows, 0);
    // Baseline: the words with the largest logit (S = F·Vᵀ), as the logit lens ranks them.
    let lens = logit_lens(&features, &words, 1).unwrap();
    assert_eq!(names[lens[1].top[0].0 as usize], "generic");
    let mi = explain(
        &features,
        &words,
        &names,
        MiConfig {
            top_words: 3,
            ..MiConfig::default()
        },
    )
    .unwrap();
    assert_eq!(mi[1][0].word, "specific", "{:?}", mi[1]);
    // The generic word carries no information about any one feature.
    let generic = mi[1].iter().find(|w| w.word == "generic");
    assert!(generic.is_none_or(|w| w.mi.abs() < 1e-6), "{generic:?}");
    // The other features are not explained by B.
    assert!(mi[0].iter().all(|w| w.word != "specific" || w.mi < 0.0));
}

fn harvest_store(model: &LoadedModel, dir: &Path, corpus: &Path) -> std::path::PathBuf {
    let cfg = HarvestConfig {
        corpus: corpus.to_string_lossy().into_owned(),
        text_field: "text".into(),
        hooks: vec![HookPoint::resid_post(0)],
        tokens: 600,
        context: 16,
        batch: 2,
        dtype: StoreDtype::F32,
        skip_bos: true,
        seed: 0,
        shard_tokens: 150,
        resume: false,
        out: dir.join("store"),
    };
    harvest(model, &cfg, &mut Silent).unwrap();
    cfg.out
}

fn topk_sae(model: &LoadedModel, k: usize) -> Sae {
    let d = model.model.config().d_model as usize;
    let mut cfg = SaeConfig::new("topk", d, 6 * d);
    cfg.k = Some(k);
    cfg.metadata.hook_name = Some("blocks.0.hook_resid_post".into());
    Sae::init(cfg, 7, Device::Cpu).unwrap()
}

fn small_config() -> LabelConfig {
    LabelConfig {
        mi: MiConfig {
            top_words: 5,
            ..MiConfig::default()
        },
        stats: StatsConfig {
            top_examples: 4,
            reservoir: 6,
            context_before: 3,
            context_after: 2,
            seed: 0,
        },
        logit_lens_tokens: 3,
        max_tokens: u64::MAX,
        ..LabelConfig::default()
    }
}

fn vocabulary(corpus: &Path) -> Vocabulary {
    let corpus = saescope::data::Corpus::open(corpus.to_str().unwrap(), "text").unwrap();
    let config = VocabularyConfig {
        size: 100,
        min_count: 1,
        stem: true,
    };
    Vocabulary::from_corpus(&corpus, config).unwrap()
}

#[test]
fn streaming_contexts_equal_a_brute_force_sort_of_the_store() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 80);
    let store_dir = harvest_store(&model, dir.path(), &corpus);
    let store = Store::open(&store_dir).unwrap();
    assert!(
        store.manifest().shards.len() > 2,
        "the pass must cross shards"
    );
    let sae = topk_sae(&model, 3);
    let cfg = small_config();
    let vocab = vocabulary(&corpus);
    let built = build_dictionary(
        LabelInputs {
            model: &model,
            sae: &sae,
            sae_name: "sae".into(),
            hook: HookPoint::resid_post(0),
            vocabulary: &vocab,
            activations: ActivationInput::Store(&store),
        },
        &cfg,
        None,
        &mut |_| {},
    )
    .unwrap();

    // Brute force: every row of the store at once, every (value, row) sorted.
    let manifest = store.manifest();
    let per_window = manifest.rows_per_window() as usize;
    let mut acts = Vec::new();
    let mut tokens: Vec<i32> = Vec::new();
    for i in 0..manifest.shards.len() {
        let shard = store.load_shard(i).unwrap();
        acts.push(shard.acts.to_kind(Kind::Float));
        tokens.extend(Vec::<i32>::try_from(&shard.tokens).unwrap());
    }
    let rows = tokens.len();
    assert_eq!(built.meta.tokens, rows as u64);
    let feature_acts = sae.encode(&Tensor::cat(&acts, 0)).unwrap();
    let values: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&feature_acts.tr().contiguous()).unwrap();
    let text = |t: i32| model.tokenizer.token_text(t as i64);
    let mut checked = 0;
    for (f, column) in values.iter().enumerate() {
        let entry = &built.entries[f];
        let mut hits: Vec<(f32, usize)> = column
            .iter()
            .enumerate()
            .filter(|(_, &v)| v > 0.0)
            .map(|(r, &v)| (v, r))
            .collect();
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        assert!((entry.frac_nonzero - hits.len() as f64 / rows as f64).abs() < 1e-12);
        assert_eq!(entry.max_act, hits.first().map_or(0.0, |h| h.0));
        let want: Vec<_> = hits.iter().take(4).collect();
        assert_eq!(entry.activations.len(), want.len(), "feature {f}");
        for (got, &&(value, row)) in entry.activations.iter().zip(&want) {
            let window = row / per_window * per_window;
            let first = row.saturating_sub(3).max(window);
            let last = (row + 3).min(window + per_window);
            assert_eq!(got.max_value, value, "feature {f}");
            assert_eq!(got.max_value_token_index, row - first);
            let want_tokens: Vec<String> = tokens[first..last].iter().map(|&t| text(t)).collect();
            assert_eq!(got.tokens, want_tokens, "feature {f} row {row}");
            let want_values: Vec<f32> = (first..last).map(|r| column[r]).collect();
            assert_eq!(got.values, want_values);
        }
        let histogram: u64 = entry.freq_hist_data_bar_heights.iter().sum();
        assert_eq!(histogram, hits.len() as u64);
        checked += usize::from(!want.is_empty());
    }
    assert!(checked > 10, "only {checked} features fired");
}

/// A dictionary of `sae` from a corpus pass, 2 windows of 16 tokens at a time.
fn build_on_corpus(
    model: &LoadedModel,
    sae: &Sae,
    corpus_path: &Path,
    cfg: &LabelConfig,
    labeller: Option<&mut LabelFn>,
) -> saescope::Result<BuiltDictionary> {
    let corpus = saescope::data::Corpus::open(corpus_path.to_str().unwrap(), "text").unwrap();
    build_dictionary(
        LabelInputs {
            model,
            sae,
            sae_name: "sae".into(),
            hook: HookPoint::resid_post(0),
            vocabulary: &vocabulary(corpus_path),
            activations: ActivationInput::Corpus {
                corpus: &corpus,
                context: 16,
                windows_per_batch: 2,
            },
        },
        cfg,
        labeller,
        &mut |_| {},
    )
}

/// A pass killed after a checkpoint (here: a panic in the progress report,
/// after the checkpoint at 300 tokens) and resumed equals an uninterrupted
/// one, reservoir samples included, for a store and for a corpus.
#[test]
fn a_killed_pass_resumes_to_the_same_dictionary() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus_path = common::write_corpus(dir.path(), 80);
    let store = Store::open(&harvest_store(&model, dir.path(), &corpus_path)).unwrap();
    let corpus = saescope::data::Corpus::open(corpus_path.to_str().unwrap(), "text").unwrap();
    let sae = topk_sae(&model, 3);
    let vocab = vocabulary(&corpus_path);
    let inputs = |from_store: bool| LabelInputs {
        model: &model,
        sae: &sae,
        sae_name: "sae".into(),
        hook: HookPoint::resid_post(0),
        vocabulary: &vocab,
        activations: if from_store {
            ActivationInput::Store(&store)
        } else {
            ActivationInput::Corpus {
                corpus: &corpus,
                context: 16,
                windows_per_batch: 2,
            }
        },
    };
    for from_store in [true, false] {
        let ckpt = dir.path().join(format!("ckpt-{from_store}"));
        let cfg = |resume: bool| LabelConfig {
            max_tokens: 540,
            checkpoint: Some(CheckpointConfig {
                dir: ckpt.clone(),
                every_tokens: 100,
                resume,
            }),
            ..small_config()
        };
        let whole = build_dictionary(
            inputs(from_store),
            &small_config_with(540),
            None,
            &mut |_| {},
        )
        .unwrap();
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            build_dictionary(inputs(from_store), &cfg(false), None, &mut |p| {
                if let LabelProgress::Tokens { done, .. } = p {
                    assert!(done < 300, "killed at {done} tokens");
                }
            })
        }));
        assert!(killed.is_err(), "the pass should have been killed");
        assert!(ckpt.join("state.json").is_file());
        // Other settings refuse the checkpoint.
        let other = LabelConfig {
            max_tokens: 600,
            ..cfg(true)
        };
        let err = build_dictionary(inputs(from_store), &other, None, &mut |_| {})
            .err()
            .expect("a resume with other settings must fail")
            .to_string();
        assert!(err.contains("other settings"), "{err}");
        let resumed = build_dictionary(inputs(from_store), &cfg(true), None, &mut |_| {}).unwrap();
        // The finished pass stays checkpointed until the caller has written
        // the dictionary (`saescope label` then removes it).
        assert!(ckpt.join("state.json").is_file());
        assert_eq!(resumed.meta.tokens, whole.meta.tokens);
        assert_eq!(resumed.entries, whole.entries, "store input: {from_store}");
    }
}

fn small_config_with(max_tokens: u64) -> LabelConfig {
    LabelConfig {
        max_tokens,
        ..small_config()
    }
}

#[test]
fn labels_come_from_the_given_model_and_stop_at_the_limit() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus_path = common::write_corpus(dir.path(), 30);
    let sae = topk_sae(&model, 2);
    let cfg = LabelConfig {
        max_tokens: 64,
        label_limit: 3,
        ..small_config()
    };
    let mut prompts = Vec::new();
    let mut labeller = |prompt: &str| {
        prompts.push(prompt.to_string());
        Ok(format!("Label: \"topic {}\"\nignored", prompts.len()))
    };
    let built = build_on_corpus(&model, &sae, &corpus_path, &cfg, Some(&mut labeller)).unwrap();
    assert_eq!(prompts.len(), 3);
    let first_word = &built.entries[0].explanation[0].word;
    assert!(prompts[0].contains(first_word.as_str()), "{}", prompts[0]);
    assert_eq!(built.entries[0].label.as_deref(), Some("topic 1"));
    assert_eq!(built.entries[2].label.as_deref(), Some("topic 3"));
    assert_eq!(built.entries[3].label, None);
    // The pass stops at a batch boundary at or after the token budget.
    assert!(
        (64..64 + 2 * 15).contains(&built.meta.tokens),
        "{}",
        built.meta.tokens
    );
}

#[test]
fn an_sae_of_the_wrong_width_is_refused() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus_path = common::write_corpus(dir.path(), 10);
    let d = model.model.config().d_model as usize;
    let mut cfg = SaeConfig::new("topk", d + 1, 4 * d);
    cfg.k = Some(2);
    let sae = Sae::init(cfg, 1, Device::Cpu).unwrap();
    let err = build_on_corpus(&model, &sae, &corpus_path, &small_config(), None)
        .err()
        .expect("width mismatch must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{}-wide", d + 1)) && msg.contains(&format!("{d} wide")),
        "{msg}"
    );
}

#[test]
fn cli_builds_searches_and_shows_a_dictionary_and_reports_bad_input() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 40);
    let sae_dir = dir.path().join("sae");
    save_sae(&topk_sae(&model, 3), &sae_dir).unwrap();
    let out = dir.path().join("dict");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let base = [
        "label",
        "--sae",
        &path(&sae_dir),
        "--model",
        common::TINY_LLAMA,
        "--corpus",
        &path(&corpus),
        "--context",
        "16",
        "--tokens",
        "200",
        "--vocab-size",
        "50",
        "--min-count",
        "1",
        "--top-words",
        "5",
    ]
    .map(String::from);
    let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
    let out_s = path(&out);
    args.extend(["--out", &out_s]);
    let (ok, stdout, stderr) = saescope(&args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("diversity: MI"), "{stdout}");
    for file in [
        "features.jsonl",
        "dictionary.json",
        "vocabulary.json",
        "index.html",
        "features.js",
        "feature_density.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let dict = Dictionary::open(&out).unwrap();
    assert_eq!(dict.entries.len(), dict.meta.d_sae);
    let word = dict.entries[5].explanation[0].word.clone();

    let (ok, stdout, _) = saescope(&[
        "features", "search", "--dict", &out_s, &word, "--limit", "1000",
    ]);
    assert!(ok);
    assert!(
        stdout.contains("#5 "),
        "feature 5 explains with `{word}`:\n{stdout}"
    );
    let (ok, stdout, _) = saescope(&["features", "show", "--dict", &out_s, "5"]);
    assert!(
        ok && stdout.contains("feature 5 of") && stdout.contains(&word),
        "{stdout}"
    );

    let (ok, stdout, _) = saescope(&["features", "sample", "--dict", &out_s, "--n", "3"]);
    assert!(ok && stdout.starts_with("| feature |"), "{stdout}");
    assert_eq!(stdout.lines().count(), 2 + 3, "{stdout}");

    // Out-of-range feature index.
    let (ok, _, stderr) = saescope(&["features", "show", "--dict", &out_s, "100000"]);
    assert!(
        !ok && stderr.contains("feature 100000 is out of range"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));

    // Missing vocabulary file: given by flag, and missing from a dictionary.
    let missing = path(&dir.path().join("no-vocab.json"));
    let mut with_missing = args.clone();
    with_missing.extend(["--vocab", &missing]);
    let (ok, _, stderr) = saescope(&with_missing);
    assert!(
        !ok && stderr.contains("vocabulary file") && stderr.contains("does not exist"),
        "{stderr}"
    );
    std::fs::remove_file(out.join("vocabulary.json")).unwrap();
    let (ok, _, stderr) = saescope(&["features", "search", "--dict", &out_s, &word]);
    assert!(!ok && stderr.contains("does not exist"), "{stderr}");

    // A truncated features.jsonl (a copy cut mid-line) names the file and line.
    let jsonl = std::fs::read(out.join("features.jsonl")).unwrap();
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    std::fs::copy(out.join("dictionary.json"), cut.join("dictionary.json")).unwrap();
    vocabulary(&corpus)
        .save(&cut.join("vocabulary.json"))
        .unwrap();
    std::fs::write(cut.join("features.jsonl"), &jsonl[..jsonl.len() / 2]).unwrap();
    let (ok, _, stderr) = saescope(&["features", "show", "--dict", cut.to_str().unwrap(), "0"]);
    assert!(
        !ok && stderr.contains("features.jsonl") && stderr.contains("line "),
        "{stderr}"
    );

    // The saved dictionary round-trips.
    let reread = Dictionary::open(&out)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(reread.contains("vocabulary"), "{reread}");
    let vocab = vocabulary(&corpus);
    save_dictionary(&out, &dict.entries, &dict.meta, &vocab).unwrap();
    assert_eq!(Dictionary::open(&out).unwrap().entries, dict.entries);
}
