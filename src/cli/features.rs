//! `saescope features search|show`: read a feature dictionary.

use std::path::PathBuf;

use clap::Subcommand;
use saescope::label::{Dictionary, FeatureEntry};

#[derive(Subcommand)]
pub enum FeaturesCommand {
    /// Features whose explanation words (or label) match WORD.
    Search {
        /// Dictionary folder written by `saescope label`.
        #[arg(long)]
        dict: PathBuf,
        word: String,
        /// Show at most this many features.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// A Markdown table of randomly chosen features that fired in the pass:
    /// MI words beside the logit-lens and top-token baselines.
    Sample {
        #[arg(long)]
        dict: PathBuf,
        #[arg(long, default_value_t = 20)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Words shown per explanation.
        #[arg(long, default_value_t = 6)]
        words: usize,
    },
    /// One feature's card.
    Show {
        #[arg(long)]
        dict: PathBuf,
        index: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: FeaturesCommand) -> anyhow::Result<()> {
    match cmd {
        FeaturesCommand::Search {
            dict,
            word,
            limit,
            json,
        } => {
            let dict = Dictionary::open(&dict)?;
            let hits = dict.search(&word);
            if json {
                let found: Vec<&FeatureEntry> = hits.iter().take(limit).map(|&(e, _)| e).collect();
                println!("{}", serde_json::to_string(&found)?);
                return Ok(());
            }
            if hits.is_empty() {
                println!("no feature's explanation mentions `{word}`");
            }
            for &(entry, _) in hits.iter().take(limit) {
                println!("{}", summary_line(entry));
            }
            if hits.len() > limit {
                println!("... {} more (raise --limit)", hits.len() - limit);
            }
        }
        FeaturesCommand::Sample {
            dict,
            n,
            seed,
            words: shown,
        } => {
            use rand::seq::IndexedRandom;
            use rand::SeedableRng;
            let dict = Dictionary::open(&dict)?;
            let alive: Vec<&FeatureEntry> = dict
                .entries
                .iter()
                .filter(|e| e.frac_nonzero > 0.0)
                .collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut picked: Vec<&&FeatureEntry> = alive.choose_multiple(&mut rng, n).collect();
            picked.sort_by_key(|e| e.index);
            println!("| feature | density | MI words | logit-lens words | top-activating tokens |");
            println!("|---:|---:|---|---|---|");
            for e in picked {
                let mi: Vec<String> = e
                    .explanation
                    .iter()
                    .take(shown)
                    .map(|w| w.word.clone())
                    .collect();
                println!(
                    "| {} | {:.1e} | {} | {} | {} |",
                    e.index,
                    e.frac_nonzero,
                    mi.join(", "),
                    words(&e.baseline_logit_lens, shown),
                    words(&e.baseline_top_tokens, shown)
                );
            }
        }
        FeaturesCommand::Show { dict, index, json } => {
            let dict = Dictionary::open(&dict)?;
            let entry = dict.feature(index)?;
            if json {
                println!("{}", serde_json::to_string_pretty(entry)?);
            } else {
                print_card(entry);
            }
        }
    }
    Ok(())
}

fn words(list: &[String], n: usize) -> String {
    list.iter().take(n).cloned().collect::<Vec<_>>().join(", ")
}

fn summary_line(e: &FeatureEntry) -> String {
    let mi: Vec<String> = e
        .explanation
        .iter()
        .take(8)
        .map(|w| w.word.clone())
        .collect();
    let label = e
        .label
        .as_deref()
        .map(|l| format!(" \"{l}\""))
        .unwrap_or_default();
    format!(
        "#{:<6}{label} {}   (density {:.2e})",
        e.index,
        mi.join(", "),
        e.frac_nonzero
    )
}

fn print_card(e: &FeatureEntry) {
    println!("feature {} of {} at {}", e.index, e.model, e.hook);
    if let Some(label) = &e.label {
        println!("label:       {label}");
    }
    println!(
        "density:     {:.3e} of tokens   max activation {:.3}",
        e.frac_nonzero, e.max_act
    );
    let mi: Vec<String> = e
        .explanation
        .iter()
        .take(12)
        .map(|w| format!("{} ({:.3})", w.word, w.mi))
        .collect();
    println!("MI words:    {}", mi.join(", "));
    println!("logit lens:  {}", words(&e.baseline_logit_lens, 12));
    println!("top tokens:  {}", words(&e.baseline_top_tokens, 12));
    let tokens = |s: &[String], v: &[f64]| {
        s.iter()
            .zip(v)
            .map(|(t, v)| format!("{t:?} {v:+.2}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("promotes:    {}", tokens(&e.pos_str, &e.pos_values));
    println!("suppresses:  {}", tokens(&e.neg_str, &e.neg_values));
    println!("top activations:");
    for ex in e.activations.iter().take(8) {
        let text: String = ex
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i == ex.max_value_token_index {
                    format!("[[{t}]]")
                } else {
                    t.clone()
                }
            })
            .collect();
        println!("  {:>7.3}  {}", ex.max_value, text.replace('\n', "\\n"));
    }
}
