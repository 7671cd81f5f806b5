//! `saescope generate`: streamed text generation.

use std::io::Write;

use clap::Args;
use saescope::hooks::Intervention;
use saescope::model::generate::chat::{chat_prompt, default_system_prompt};
use saescope::model::generate::engine::{generate_sequence, SequenceRequest};
use saescope::model::SamplingConfig;

use super::ModelArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Wrap the prompt in the model's chat template (ChatML).
    #[arg(long)]
    chat: bool,
    /// System message for --chat (default: the template's own, if any).
    #[arg(long)]
    system: Option<String>,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// 0 = no top-k filter.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Leave the BOS token out (ignored with --chat, whose template starts the text).
    #[arg(long)]
    no_bos: bool,
    /// Intervention file(s) (from `saescope steer`): print the baseline, then
    /// the steered continuation.
    #[arg(long = "steer")]
    steer: Vec<std::path::PathBuf>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let tok = &loaded.tokenizer;
    let mut stop_ids = tok.eos_ids().to_vec();
    let (text, add_bos) = if args.chat {
        let system = args.system.clone().or_else(|| {
            loaded
                .chat_template
                .as_deref()
                .and_then(default_system_prompt)
        });
        let (text, end_of_turn) = chat_prompt(tok, &args.prompt, system.as_deref())?;
        stop_ids.push(end_of_turn);
        (text, false)
    } else {
        (args.prompt.clone(), !args.no_bos)
    };
    let prompt = tok.encode(&text, add_bos)?;
    let request = |steers: Vec<Box<dyn Intervention>>| SequenceRequest {
        prompt: prompt.clone(),
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_ids: stop_ids.clone(),
        steers,
        steers_key: None,
    };
    if args.steer.is_empty() {
        return stream(&loaded, &args, request(Vec::new()));
    }
    let n_layers = loaded.model.config().n_layers;
    let steers = saescope::steer::load_steer_files(&args.steer, n_layers, loaded.model.device())?;
    println!("== baseline");
    stream(&loaded, &args, request(Vec::new()))?;
    let names: Vec<String> = args.steer.iter().map(|p| p.display().to_string()).collect();
    println!("== steered ({})", names.join(" + "));
    let steers = steers
        .into_iter()
        .map(|s| s as Box<dyn Intervention>)
        .collect();
    stream(&loaded, &args, request(steers))
}

/// Generates `request`, streaming text to stdout (the stop token itself is
/// not printed).
fn stream(
    loaded: &saescope::model::LoadedModel,
    args: &GenerateArgs,
    request: SequenceRequest,
) -> anyhow::Result<()> {
    let tok = &loaded.tokenizer;
    let stop_ids = request.stop_ids.clone();
    let mut stdout = std::io::stdout().lock();
    if !args.chat {
        write!(stdout, "{}", args.prompt)?;
    }
    // Decode the whole continuation each step and print what is new, so that
    // multi-token characters appear once they are complete.
    let mut new_ids = Vec::new();
    let mut printed = 0;
    let mut stream_error = None;
    generate_sequence(&loaded.model, request, |id| {
        if stop_ids.contains(&id) {
            return;
        }
        new_ids.push(id);
        match tok.decode(&new_ids) {
            Ok(text) if !text.ends_with('\u{FFFD}') && text.len() > printed => {
                let _ = write!(stdout, "{}", &text[printed..]);
                let _ = stdout.flush();
                printed = text.len();
            }
            Ok(_) => {}
            Err(e) => stream_error = Some(e),
        }
    })?;
    if let Some(e) = stream_error {
        return Err(e.into());
    }
    writeln!(stdout)?;
    Ok(())
}
