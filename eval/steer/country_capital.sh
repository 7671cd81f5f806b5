#!/usr/bin/env bash
# Learns each intervention on eval/tasks/country_capital/train.jsonl with
# SmolLM2-135M and evaluates it on the test split; writes
# eval/results/steer/country_capital/<method>.{json,safetensors,svg} and
# <method>.eval.json, and prints the comparison table.
#   bash eval/steer/country_capital.sh [EPOCHS] [SAE_DIR]
# SAE_DIR (default out/l8-5m-sae/blocks.8.hook_resid_post-topk-x16-k32, the
# reference run of docs/results.md) adds SAE-feature steering: the 3 features whose
# decoder rows most raise the logit difference on the training prompts, α = 10.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BIN=target/release/saescope
TASK=eval/tasks/country_capital
OUT=eval/results/steer/country_capital
EPOCHS="${1:-15}"
SAE="${2:-out/l8-5m-sae/blocks.8.hook_resid_post-topk-x16-k32}"
mkdir -p "$OUT"
common=(--task "$TASK/train.jsonl" --model smollm2-135m --threads 2 --epochs "$EPOCHS" --batch 40 --lambda-faith 1.0)
"$BIN" steer learn --method activation-scaling --per-position --lambda-min 0.01 --lr 0.02 "${common[@]}" --out "$OUT/activation_scaling.json"
"$BIN" steer learn --method dyn-scalar --lambda-min 0.01 --lr 0.01 "${common[@]}" --out "$OUT/dyn_scalar.json"
"$BIN" steer learn --method steering-vector --lambda-min 0.01 --lr 0.01 "${common[@]}" --out "$OUT/steering_vector.json"
"$BIN" steer learn --method mean-difference --task "$TASK/train.jsonl" --model smollm2-135m --threads 2 \
  --sites blocks.15.hook_resid_post --scale 1 --out "$OUT/mean_difference.json"
methods=(activation_scaling dyn_scalar steering_vector mean_difference)
if [ -f "$SAE/cfg.json" ]; then
  "$BIN" steer sae-features --sae "$SAE" --select-from "$TASK/train.jsonl" --top 3 --alpha 10 \
    --threads 2 --out "$OUT/sae_features.json" > "$OUT/sae_features.selection.txt"
  methods+=(sae_features)
fi
for m in "${methods[@]}"; do
  "$BIN" eval steer --intervention "$OUT/$m.json" --task "$TASK/test.jsonl" --model smollm2-135m \
    --threads 2 --out "$OUT/$m.eval.json" --json > /dev/null
done
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for m in ["activation_scaling", "dyn_scalar", "steering_vector", "mean_difference", "sae_features"]:
    p = out / f"{m}.eval.json"
    if not p.exists():
        continue
    r = json.loads(p.read_text())
    rows.append((m, r))
print("| method | flipped | logit diff (clean → steered) | prob diff | KL (other tokens) | mass moved | L1 | components touched |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for m, r in rows:
    print(f"| {m} | {100*r['flipped_fraction']:.1f}% | {r['mean_logit_diff_clean']:+.2f} → {r['mean_logit_diff']:+.2f} | "
          f"{r['mean_prob_diff_clean']:+.3f} → {r['mean_prob_diff']:+.3f} | {r['kl']:.3f} | {r['mass_moved']:.3f} | "
          f"{r['l1']:.1f} | {r['components_changed']} / {r['components_total']} ({100*r['fraction_changed']:.1f}%) |")
PY
