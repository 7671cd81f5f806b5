//! Rebuilds a Hugging Face `tokenizers::Tokenizer` from the tokenizer a GGUF
//! file stores in its metadata (llama.cpp's `tokenizer.ggml.*` keys).
//!
//! Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`, the GPT-2 / Llama 3
//! / SmolLM family) is supported. The vocabulary is `tokenizer.ggml.tokens`
//! (index = id), the merges `tokenizer.ggml.merges` (`"a b"`, best first). How
//! text is split before BPE is named by `tokenizer.ggml.pre`; the splits we
//! know are rebuilt exactly, as in the model's own `tokenizer.json`:
//! - `smollm`: digits one by one, then the GPT-2 regex (SmolLM/SmolLM2);
//! - `gpt2`, `default` or absent: the GPT-2 regex;
//! - `llama-bpe` / `llama3` family, `qwen2` family: their regexes.
//!
//! Any other value is refused rather than tokenized subtly wrong.
//!
//! Tokens typed control (3) or user-defined (4) in `tokenizer.ggml.token_type`
//! become added tokens, so `<|im_start|>` in text is one token, as in
//! llama.cpp; control tokens are special (skipped by
//! `decode(.., skip_special_tokens = true)`). No BOS/EOS is added by the
//! post-processor: the caller decides, see [`special_token_ids`] and
//! [`adds_bos_token`].

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};
use crate::model::load::gguf::file::{GgufFile, GgufValue};

const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama 3's split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`): numbers in
/// groups of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: as Llama 3's, but digits one by one.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Builds the tokenizer a GGUF file describes. Errors are
/// [`Error::Tokenizer`] for tokenizers we cannot rebuild, and
/// [`Error::Malformed`] for metadata of the wrong shape.
pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
    let path = gguf.path().display().to_string();
    let model = gguf.meta_opt_str("tokenizer.ggml.model")?.ok_or_else(|| {
        Error::Tokenizer(format!(
            "{path} has no tokenizer (no `tokenizer.ggml.model`)"
        ))
    })?;
    if model != "gpt2" {
        return Err(Error::Tokenizer(format!(
            "{path}: tokenizer.ggml.model is `{model}`; only `gpt2` (byte-level BPE) can be rebuilt"
        )));
    }
    let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
    let merges = string_array(gguf, "tokenizer.ggml.merges")?;
    let token_types = match gguf.meta_opt_array("tokenizer.ggml.token_type")? {
        None => vec![1; tokens.len()],
        Some(types) => {
            let types: Option<Vec<i64>> = types.iter().map(GgufValue::as_i64).collect();
            match types {
                Some(t) if t.len() == tokens.len() => t,
                _ => {
                    return Err(Error::malformed(
                        gguf.path(),
                        format!(
                            "tokenizer.ggml.token_type must be {} integers, one per token",
                            tokens.len()
                        ),
                    ))
                }
            }
        }
    };
    let ids = u32::try_from(tokens.len()).map_err(|_| {
        Error::malformed(
            gguf.path(),
            "more than 2^32 tokens in tokenizer.ggml.tokens",
        )
    })?;

    // Ordinary tokens are spelled in GPT-2's byte alphabet; a few converters
    // write some as plain UTF-8, which we respell. Added tokens keep their
    // text: that is what they match in the input.
    let alphabet = byte_alphabet();
    let mut added = Vec::new();
    let vocab: Vocab = tokens
        .iter()
        .zip(&token_types)
        .zip(0..ids)
        .map(|((&token, &ty), id)| {
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                let special = ty == TOKEN_TYPE_CONTROL;
                added.push(AddedToken::from(token, special).normalized(false));
                (token.to_string(), id)
            } else if token.chars().all(|c| alphabet.contains(&c)) {
                (token.to_string(), id)
            } else {
                let spelled = token.bytes().map(|b| alphabet[b as usize]).collect();
                (spelled, id)
            }
        })
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    Error::malformed(
                        gguf.path(),
                        format!("tokenizer.ggml.merges entry `{m}` is not two tokens"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::Tokenizer(format!("{path}: {e}")))?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(gguf)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.with_post_processor(Some(ByteLevelProcessor::new(false, false, true)));
    let (special, plain): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&plain);
    Ok(tokenizer)
}

/// The pre-tokenizer `tokenizer.ggml.pre` names.
fn pre_tokenizer(gguf: &GgufFile) -> Result<PreTokenizerWrapper> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("split regex: {e}")))?;
        Ok(Sequence::new(vec![split.into(), byte_level(false).into()]).into())
    };
    let pre = gguf.meta_opt_str("tokenizer.ggml.pre")?;
    match pre.unwrap_or("default") {
        "default" | "gpt2" | "gpt-2" => Ok(byte_level(true).into()),
        "smollm" => {
            Ok(Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into())
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => {
            split(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => split(QWEN2_SPLIT),
        other => Err(Error::Tokenizer(format!(
            "{}: tokenizer.ggml.pre is `{other}`, a pre-tokenizer saescope does not know \
             (known: default, gpt2, smollm, llama-bpe/llama3 family, qwen2 family)",
            gguf.path().display()
        ))),
    }
}

/// `(bos, eos)` ids from `tokenizer.ggml.bos_token_id` / `eos_token_id`;
/// `None` where absent or not a u32.
pub fn special_token_ids(gguf: &GgufFile) -> (Option<u32>, Option<u32>) {
    let id = |key: &str| {
        gguf.metadata()
            .get(key)
            .and_then(GgufValue::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    (
        id("tokenizer.ggml.bos_token_id"),
        id("tokenizer.ggml.eos_token_id"),
    )
}

/// Whether the file asks for BOS in front of every text
/// (`tokenizer.ggml.add_bos_token`; llama.cpp's default for byte-level BPE is
/// no).
pub fn adds_bos_token(gguf: &GgufFile) -> bool {
    gguf.metadata()
        .get("tokenizer.ggml.add_bos_token")
        .and_then(GgufValue::as_bool)
        .unwrap_or(false)
}

fn string_array<'a>(gguf: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let items = gguf.meta_array(key)?;
    items
        .iter()
        .map(|v| {
            v.as_str().ok_or_else(|| {
                Error::malformed(gguf.path(), format!("`{key}` holds a non-string element"))
            })
        })
        .collect()
}

/// GPT-2's byte alphabet: the character each byte is spelled as. Printable
/// Latin-1 bytes stand for themselves; the other 68 map, in order, to U+0100
/// onwards.
fn byte_alphabet() -> Vec<char> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next).unwrap_or('?');
                next += 1;
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load::gguf::file::testutil::{
        real_model, reference_python, run_python, strings, GgufBuilder,
    };

    fn toy(pre: Option<&str>, model: &str) -> GgufFile {
        let alphabet = byte_alphabet();
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<think>".into(),
        ];
        let mut types = vec![3, 3, 4];
        for c in &alphabet {
            tokens.push(c.to_string());
            types.push(1);
        }
        for t in ["Ġt", "he", "Ġthe", "Ġ1", "12"] {
            tokens.push(t.to_string());
            types.push(1);
        }
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut b = GgufBuilder::new()
            .kv("tokenizer.ggml.model", GgufValue::String(model.into()))
            .kv("tokenizer.ggml.tokens", strings(&tokens))
            .kv(
                "tokenizer.ggml.token_type",
                GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
            )
            .kv(
                "tokenizer.ggml.merges",
                strings(&["Ġ t", "h e", "Ġt he", "Ġ 1", "1 2"]),
            )
            .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(1))
            .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(0));
        if let Some(pre) = pre {
            b = b.kv("tokenizer.ggml.pre", GgufValue::String(pre.into()));
        }
        GgufFile::from_bytes("toy.gguf", b.build()).unwrap()
    }

    fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
        t.encode(text, false).unwrap().get_ids().to_vec()
    }

    fn id_of(t: &Tokenizer, token: &str) -> u32 {
        t.token_to_id(token).unwrap()
    }

    #[test]
    fn alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[0], 'Ā');
        assert_eq!(a[0xad], 'Ń');
        let unique: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(unique.len(), 256);
    }

    #[test]
    fn smollm_splits_digits_and_keeps_specials_whole() {
        let g = toy(Some("smollm"), "gpt2");
        let t = tokenizer_from_gguf(&g).unwrap();
        assert_eq!(t.get_vocab_size(true), 3 + 256 + 5);
        // "the" merges; digits are split one by one, so "12" never forms.
        assert_eq!(
            ids(&t, "<|im_start|> the 12"),
            vec![
                1,
                id_of(&t, "Ġthe"),
                id_of(&t, "Ġ"),
                id_of(&t, "1"),
                id_of(&t, "2")
            ]
        );
        assert_eq!(ids(&t, "<think>x"), vec![2, id_of(&t, "x")]);
        // No BOS/EOS added even when asked for special tokens.
        assert_eq!(t.encode("x", true).unwrap().get_ids(), &[id_of(&t, "x")]);
        let enc = ids(&t, "<|endoftext|> the\n");
        assert_eq!(t.decode(&enc, false).unwrap(), "<|endoftext|> the\n");
        assert_eq!(t.decode(&enc, true).unwrap(), " the\n");
        assert_eq!(special_token_ids(&g), (Some(1), Some(0)));
        assert!(!adds_bos_token(&g));
    }

    #[test]
    fn plain_byte_level_keeps_digit_runs() {
        let t = tokenizer_from_gguf(&toy(None, "gpt2")).unwrap();
        assert_eq!(ids(&t, " 12"), vec![id_of(&t, "Ġ1"), id_of(&t, "2")]);
        assert_eq!(ids(&t, "12"), vec![id_of(&t, "12")]);
        let t = tokenizer_from_gguf(&toy(Some("qwen2"), "gpt2")).unwrap();
        assert_eq!(ids(&t, "12"), vec![id_of(&t, "1"), id_of(&t, "2")]);
        // Non-ASCII text round-trips through the byte alphabet.
        let text = "héllo – 世界";
        assert_eq!(t.decode(&ids(&t, text), false).unwrap(), text);
    }

    #[test]
    fn refuses_what_it_cannot_rebuild() {
        let err = tokenizer_from_gguf(&toy(None, "llama")).unwrap_err();
        assert!(
            matches!(&err, Error::Tokenizer(m) if m.contains("`llama`")),
            "{err}"
        );
        let err = tokenizer_from_gguf(&toy(Some("chameleon"), "gpt2")).unwrap_err();
        assert!(
            matches!(&err, Error::Tokenizer(m) if m.contains("chameleon")),
            "{err}"
        );
        let empty = GgufFile::from_bytes("e.gguf", GgufBuilder::new().build()).unwrap();
        assert!(matches!(
            tokenizer_from_gguf(&empty),
            Err(Error::Tokenizer(_))
        ));
        assert_eq!(special_token_ids(&empty), (None, None));
    }

    /// Encodes sample texts with the tokenizer rebuilt from the real model and
    /// compares the ids with two references built by Hugging Face
    /// transformers from the same GGUF
    /// (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`):
    /// - as loaded: transformers ignores `tokenizer.ggml.pre = "smollm"` and
    ///   splits with the plain GPT-2 regex. It agrees with us on the sample
    ///   prompts; it differs on whitespace runs before a digit;
    /// - with the pre-tokenizer of SmolLM2's own `tokenizer.json` (Digits
    ///   individually, then ByteLevel), which is also what llama.cpp runs for
    ///   `smollm`: must agree on every text.
    ///
    /// Run with
    /// `cargo test --lib gguf_tokenizer::tests::real_model -- --ignored --nocapture`
    /// (needs `.cache/models/smollm2-135m/*.gguf` and `.venv` with transformers).
    #[test]
    #[ignore = "needs the real model file and a Python with transformers"]
    fn real_model_matches_transformers() {
        let (Some(model), Some(python)) = (real_model(), reference_python()) else {
            return;
        };
        let g = GgufFile::open(&model).unwrap();
        let t = tokenizer_from_gguf(&g).unwrap();
        let prompts = [
            "The capital of France is",
            "In 1984, 12345 people",
            "<|im_start|>user\nHi<|im_end|>",
            "def fibonacci(n):",
            "In 1984, 12345 people walked",
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>assistant\n",
            "I'm sure they'll say it's 3.14159, isn't it?  Two  spaces,\ttab,\n\nnewlines.\r\n",
            "naïve café — 東京タワー 🚀 Привет, мир! ﷺ",
            "fn main() { let x: Vec<u8> = vec![0x1F; 32]; }",
            "    indented code\n\t\tand tabs   trailing   ",
            "<|endoftext|><repo_name>a/b<file_sep>x<|im_end|>",
            "",
            " ",
            "1,000,000.00 and -42e-7 and 2024-01-01T12:00:00Z",
        ];
        let mut texts: Vec<String> = prompts.iter().map(|s| s.to_string()).collect();
        // Long mixed text: source code and prose, with indented digits.
        texts.push(include_str!("tokenizer.rs").to_string());
        texts.push(include_str!("quant.rs").to_string());
        texts.push(include_str!("file.rs").to_string());
        let script = r#"
import sys, json, os
from transformers import AutoTokenizer
from tokenizers import pre_tokenizers
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
texts = json.load(sys.stdin)
as_loaded = [tok.encode(t, add_special_tokens=False) for t in texts]
tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Digits(individual_digits=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
])
smollm2 = [tok.encode(t, add_special_tokens=False) for t in texts]
# The same vocabulary under transformers' Llama 3 and Qwen2 splits.
from tokenizers import Regex
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS as splits
others = []
for pre in ["llama-bpe", "qwen2"]:
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(splits[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    others.append([tok.encode(t, add_special_tokens=False) for t in texts])
print(json.dumps([as_loaded, smollm2, others]))
"#;
        let out = run_python(
            &python,
            script,
            &[model.to_str().unwrap()],
            &serde_json::to_string(&texts).unwrap(),
        );
        type Ids = Vec<Vec<u32>>;
        let (as_loaded, smollm2, others): (Ids, Ids, Vec<Ids>) =
            serde_json::from_str(&out).unwrap();
        let first_difference = |text: &str, got: &[u32], want: &[u32]| {
            let i = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i))?;
            let window = |v: &[u32]| {
                let v = &v[i.saturating_sub(3)..(i + 3).min(v.len())];
                let pieces: Vec<_> = v.iter().map(|&id| t.id_to_token(id)).collect();
                format!("{v:?} {pieces:?}")
            };
            let head: String = text.chars().take(40).collect();
            Some(format!(
                "token {i} of {head:?}...: ours {}, reference {}",
                window(got),
                window(want)
            ))
        };
        let (mut total, mut differ_as_loaded) = (0, 0);
        for (k, text) in texts.iter().enumerate() {
            let got = ids(&t, text);
            if text.len() < 80 {
                println!("{text:?} -> {got:?}");
            }
            if let Some(d) = first_difference(text, &got, &smollm2[k]) {
                panic!("differs from SmolLM2's pre-tokenizer at {d}");
            }
            match first_difference(text, &got, &as_loaded[k]) {
                Some(d) if k < prompts.len() => panic!("differs from transformers at {d}"),
                Some(d) => {
                    differ_as_loaded += 1;
                    println!("transformers as loaded differs at {d}");
                }
                None => {}
            }
            let special = text.contains("<|") || text.contains("<repo") || text.contains("<file");
            if !special {
                assert_eq!(&t.decode(&got, false).unwrap(), text, "round trip");
            }
            total += got.len();
        }
        println!(
            "{} texts, {total} tokens: identical to SmolLM2's tokenizer; transformers as \
             loaded from the GGUF differs on {differ_as_loaded} of the {} long texts",
            texts.len(),
            texts.len() - prompts.len()
        );
        // The Llama 3 and Qwen2 splits, on SmolLM2's vocabulary.
        for (pre, reference) in ["llama-bpe", "qwen2"].iter().zip(&others) {
            let mut b =
                GgufBuilder::new().kv("tokenizer.ggml.pre", GgufValue::String(pre.to_string()));
            for key in ["model", "tokens", "token_type", "merges"] {
                let key = format!("tokenizer.ggml.{key}");
                b = b.kv(&key, g.metadata()[&key].clone());
            }
            let other = GgufFile::from_bytes("resplit.gguf", b.build()).unwrap();
            let t = tokenizer_from_gguf(&other).unwrap();
            for (text, want) in texts.iter().zip(reference) {
                assert_eq!(&ids(&t, text), want, "{pre}: {text:?}");
            }
            println!(
                "{pre} split: identical to transformers on all {} texts",
                texts.len()
            );
        }
        assert_eq!(special_token_ids(&g), (Some(1), Some(2)));
        assert!(!adds_bos_token(&g));
        assert_eq!(t.get_vocab_size(true), 49152);
    }
}
