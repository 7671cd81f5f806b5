#!/usr/bin/env bash
# Steered against unsteered greedy generation on SmolLM2-135M, side by side in
# alternating rounds (`saescope bench steer`), for each kind of intervention
# learned on the country–capital task (eval/steer/country_capital.sh), at
# batch 1 and batch 8. Appends one JSON record per run, with the machine's
# facts, to eval/results/steer-speed.jsonl.
#
#     bash eval/bench/steer.sh [ROUNDS]     # default 3
#
# With SAE=DIR (a TopK SAE at blocks.8.hook_resid_post, such as the
# quickstart's out/quickstart/sae/blocks.8.hook_resid_post-topk-x16-k32), also
# an SAE-feature clamp with an ablation and Wu et al.'s amplify strategy at
# that block, written by `saescope steer` into a temporary folder.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export LIBTORCH="${LIBTORCH:-$ROOT/.cache/libtorch}"
cargo build --release --quiet --bin saescope
STEERS="eval/results/steer/country_capital"
OUT="eval/results/steer-speed.jsonl"
FILES=()
for kind in steering_vector activation_scaling dyn_scalar mean_difference; do
  FILES+=("$STEERS/$kind.json")
done
if [ -n "${SAE:-}" ]; then
  TMP="$(mktemp -d)"
  target/release/saescope steer sae-features --sae "$SAE" --edit 3017:clamp:10 --edit 3737:ablate \
    --out "$TMP/sae_clamp.json"
  target/release/saescope steer sae-runtime --sae "$SAE" --strategy amplify --features 3017,3737 \
    --out "$TMP/sae_amplify.json"
  FILES+=("$TMP/sae_clamp.json" "$TMP/sae_amplify.json")
fi
for file in "${FILES[@]}"; do
  for batch in 1 8; do
    record="$(target/release/saescope bench steer --model smollm2-135m \
      --steer "$file" --batch "$batch" --rounds "${1:-3}" --json)"
    echo "$record" >> "$OUT"
    echo "$record" | python3 -c '
import json, sys
r = json.load(sys.stdin)
name, batch = r["interventions"][0].split("/")[-1], r["batch"]
steered, plain, ratio = r["steered_tokens_per_s"], r["unsteered_tokens_per_s"], r["ratio"]
print(f"{name:26} batch {batch}: {steered:6.1f} vs {plain:6.1f} tok/s = {ratio:.2f}x")'
  done
done
