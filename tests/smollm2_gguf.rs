//! SmolLM2-135M-Instruct from its Q4_1 GGUF (installed by `scripts/setup.sh`):
//! next-token log-probs against transformers on the same file, and the CLI.

use std::path::PathBuf;
use std::process::Command;

use saescope::model::load::source::{resolve_model, ModelSource, DEFAULT_MODEL_ALIAS};
use saescope::model::load_model;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn reference() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn default_model_is_installed() {
    match resolve_model(DEFAULT_MODEL_ALIAS) {
        Ok(ModelSource::Gguf(_)) => {}
        other => panic!("the default model is missing ({other:?}); run scripts/setup.sh"),
    }
}

#[test]
fn logprobs_match_transformers_on_the_same_gguf() {
    let loaded = load_model(DEFAULT_MODEL_ALIAS, Device::Cpu, Kind::Float).unwrap();
    let r = reference();
    let fixed = ids(&r["fixed_ids"]);
    let mut worst: f64 = 0.0;
    for p in r["prompts"].as_array().unwrap() {
        let prompt = p["prompt"].as_str().unwrap();
        let expected_ids = ids(&p["ids"]);
        assert_eq!(
            loaded.tokenizer.encode(prompt, true).unwrap(),
            expected_ids,
            "tokenizer: {prompt}"
        );
        let tokens = Tensor::from_slice(&expected_ids).view([1, -1]);
        let logprobs = loaded
            .model
            .logits(&tokens)
            .unwrap()
            .get(0)
            .get(-1)
            .log_softmax(-1, Kind::Double);
        let ours = Vec::<f64>::try_from(&logprobs).unwrap();
        for (id, lp) in fixed.iter().zip(p["logprobs_last_at"].as_array().unwrap()) {
            worst = worst.max((ours[*id as usize] - lp.as_f64().unwrap()).abs());
        }
        for (id, lp) in p["logprobs_last_ids_0_100"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            worst = worst.max((ours[id] - lp.as_f64().unwrap()).abs());
        }
        for entry in p["top20"].as_array().unwrap() {
            let id = entry["id"].as_i64().unwrap() as usize;
            worst = worst.max((ours[id] - entry["logprob"].as_f64().unwrap()).abs());
        }
        let top = p["top20"][0]["id"].as_i64().unwrap();
        assert_eq!(
            logprobs.argmax(-1, false).int64_value(&[]),
            top,
            "{prompt}: top token"
        );
    }
    assert!(
        worst <= 1e-3,
        "log-probs differ from transformers by up to {worst}"
    );
}

/// Runs the binary and returns its stdout, failing with its stderr.
fn saescope(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const FRANCE: &str = "The capital of France is";

#[test]
fn cli_logits_ranks_paris_first() {
    let out = saescope(&[
        "logits",
        "--model",
        "smollm2-135m",
        "--prompt",
        FRANCE,
        "--top-k",
        "3",
        "--json",
    ]);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json["ids"],
        serde_json::json!([1, 504, 3575, 282, 4649, 314])
    );
    assert_eq!(json["top"][0]["token"], " Paris");
    assert_eq!(json["top"].as_array().unwrap().len(), 3);
    let lp = json["top"][0]["logprob"].as_f64().unwrap();
    assert!(lp < 0.0 && lp > -1.0, "{lp}");

    let out = saescope(&[
        "logits",
        "--model",
        "smollm2-135m",
        "--prompt",
        FRANCE,
        "--json",
        "--no-bos",
    ]);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["ids"], serde_json::json!([504, 3575, 282, 4649, 314]));
}

#[test]
fn cli_generate_chat_answers() {
    let text = saescope(&[
        "generate",
        "--prompt",
        "What is the capital of France?",
        "--chat",
        "--max-new-tokens",
        "12",
    ]);
    assert!(text.contains("Paris"), "{text}");
    assert!(
        !text.contains("<|im_end|>"),
        "the end-of-turn token must stop generation: {text}"
    );
}
