//! `saescope logits`: token ids and the top next tokens of a prompt.

use clap::Args;
use serde_json::json;
use tch::{Kind, Tensor};

use super::ModelArgs;

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    /// How many next tokens to list.
    #[arg(long, default_value_t = 10)]
    top_k: i64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Leave the BOS token out.
    #[arg(long)]
    no_bos: bool,
}

pub fn run(args: LogitsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.top_k > 0, "--top-k must be positive");
    let loaded = args.model.load()?;
    let ids = loaded.tokenizer.encode(&args.prompt, !args.no_bos)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt has no tokens");
    let tokens = Tensor::from_slice(&ids).view([1, -1]);
    let logits = tch::no_grad(|| loaded.model.logits(&tokens))?;
    let last = logits.get(0).get(-1).log_softmax(-1, Kind::Float);
    let k = args.top_k.min(last.size()[0]);
    let (values, indices) = last.topk(k, -1, true, true);
    let values = Vec::<f32>::try_from(&values)?;
    let indices = Vec::<i64>::try_from(&indices)?;
    let top: Vec<(i64, String, f32)> = indices
        .iter()
        .zip(&values)
        .map(|(&id, &lp)| (id, loaded.tokenizer.token_text(id), lp))
        .collect();
    if args.json {
        let top: Vec<_> = top
            .iter()
            .map(|(id, token, lp)| json!({"id": id, "token": token, "logprob": lp}))
            .collect();
        println!("{}", json!({"ids": ids, "top": top}));
    } else {
        println!("ids: {ids:?}");
        println!("{:>4}  {:>7}  {:>10}  token", "rank", "id", "logprob");
        for (rank, (id, token, lp)) in top.iter().enumerate() {
            println!("{:>4}  {id:>7}  {lp:>10.4}  {token:?}", rank + 1);
        }
    }
    Ok(())
}
