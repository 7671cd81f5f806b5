//! Labelling on the real SmolLM2-135M (installed by `scripts/setup.sh`): an
//! SAE whose decoder rows are the model's own embeddings of known words must
//! be explained by those words, end to end through the vocabulary embedding,
//! the final norm, the MI ranking and a short corpus pass.

use saescope::data::Corpus;
use saescope::hooks::HookPoint;
use saescope::label::{
    build_dictionary, ActivationInput, LabelConfig, LabelInputs, MiConfig, Vocabulary,
    VocabularyConfig,
};
use saescope::model::load::source::DEFAULT_MODEL_ALIAS;
use saescope::model::load_model;
use saescope::sae::{Sae, SaeConfig, SaeWeights};
use tch::{Device, Kind, Tensor};

const WORDS: [&str; 24] = [
    "volcano", "river", "music", "king", "money", "horse", "winter", "doctor", "garden", "ship",
    "bread", "mountain", "church", "battle", "flower", "island", "letter", "silver", "forest",
    "school", "ocean", "wine", "engine", "poem",
];

#[test]
fn an_sae_built_from_word_embeddings_is_explained_by_those_words() {
    let model = load_model(DEFAULT_MODEL_ALIAS, Device::Cpu, Kind::Float)
        .expect("the default model (run scripts/setup.sh)");
    let dir = tempfile::tempdir().unwrap();
    // The vocabulary: the feature words plus frequent filler, from a word list.
    let list = dir.path().join("words.txt");
    let filler = "the of and to in is that it was for on are with as his they be at one have this from or had by";
    let mut text = String::new();
    for (i, w) in filler.split(' ').enumerate() {
        text.push_str(&format!("{w} {}\n", 100_000 - i));
    }
    for w in WORDS {
        text.push_str(&format!("{w} 50\n"));
    }
    std::fs::write(&list, text).unwrap();
    let config = VocabularyConfig {
        size: 5000,
        min_count: 1,
        stem: false,
    };
    let vocab = Vocabulary::from_word_list(&list, config).unwrap();
    let embeddings = vocab.embed(&model).unwrap();
    // Decoder rows = the feature words' embeddings, at a residual-like scale.
    let rows: Vec<i64> = WORDS
        .iter()
        .map(|w| vocab.words.iter().position(|v| v == w).unwrap() as i64)
        .collect();
    let dirs = embeddings.index_select(0, &Tensor::from_slice(&rows));
    let dirs = &dirs / dirs.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    let d = model.model.config().d_model as usize;
    let mut cfg = SaeConfig::new("topk", d, WORDS.len());
    cfg.k = Some(4);
    cfg.apply_b_dec_to_input = false;
    let sae = Sae::new(cfg, SaeWeights::from_matrices(dirs.copy(), dirs)).unwrap();

    let corpus_path = dir.path().join("corpus.txt");
    std::fs::write(
        &corpus_path,
        "The volcano erupted near the river while the king counted his money.\n\n\
         In winter the doctor walked through the garden to the ship with bread.\n",
    )
    .unwrap();
    let corpus = Corpus::open(corpus_path.to_str().unwrap(), "text").unwrap();
    let built = build_dictionary(
        LabelInputs {
            model: &model,
            sae: &sae,
            sae_name: "embeddings".into(),
            hook: HookPoint::resid_post(8),
            vocabulary: &vocab,
            activations: ActivationInput::Corpus {
                corpus: &corpus,
                context: 16,
                windows_per_batch: 2,
            },
        },
        &LabelConfig {
            mi: MiConfig {
                top_words: 3,
                ..MiConfig::default()
            },
            max_tokens: 64,
            ..LabelConfig::default()
        },
        None,
        &mut |_| {},
    )
    .unwrap();
    let own_word_first = built
        .entries
        .iter()
        .zip(WORDS)
        .filter(|(e, w)| e.explanation[0].word == *w)
        .count();
    assert!(
        own_word_first >= WORDS.len() - 2,
        "only {own_word_first} of {} features are explained first by their own word: {:?}",
        WORDS.len(),
        built
            .entries
            .iter()
            .map(|e| e.explanation[0].word.clone())
            .collect::<Vec<_>>()
    );
    // The frequent filler words carry no MI for these features.
    assert!(built.entries.iter().all(|e| e.explanation[0].mi > 0.0));
    // TopK with k = 4: at most 4 features fire per token.
    let per_token: f64 = built.entries.iter().map(|e| e.frac_nonzero).sum();
    assert!(
        built.meta.tokens > 0 && per_token > 0.0 && per_token <= 4.0 + 1e-9,
        "{per_token}"
    );
}
