#!/usr/bin/env bash
# Sets up what is missing, then the main job on the default model
# (SmolLM2-135M-Instruct from its GGUF) and corpus:
#   1. harvest ~1M layer-8 residual activations (model in `auto` precision: bf16
#      on CPUs with native bf16 arithmetic, f32 elsewhere; f32 store);
#   2. train a TopK SAE on them (train/quickstart.toml);
#   3. evaluate it spliced into the model on text it was not trained on;
#   4. label its features (MI explanations, contexts, densities) from the
#      harvested store into a feature dictionary with an HTML browser;
#   5. print the summary and where the plots are.
# Each step resumes or skips what a previous run finished.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
BIN="$ROOT/target/release/saescope"
OUT=out/quickstart
HOOK=blocks.8.hook_resid_post
SAE="$OUT/sae/$HOOK-topk-x16-k32"
mkdir -p "$OUT"

echo "== 1/4 harvest: $HOOK, 1M tokens"
resume=()
[ -f "$OUT/acts/manifest.json" ] && resume=(--resume)
"$BIN" harvest --model smollm2-135m --model-dtype auto --hook "$HOOK" --tokens 1000000 \
  --context 128 --skip-bos --out "$OUT/acts" "${resume[@]}"
windows=$(python3 -c "import json; print(json.load(open('$OUT/acts/manifest.json'))['windows'])")

echo "== 2/4 train: TopK SAE, 16x expansion, k = 32"
if [ -f "$SAE/sae_weights.safetensors" ]; then
  echo "already trained: $SAE"
else
  resume=()
  [ -f "$OUT/sae/checkpoint/state.json" ] && resume=(--resume)
  "$BIN" train --config train/quickstart.toml "${resume[@]}"
fi

echo "== 3/4 evaluate on 8192 held-out tokens (the corpus after the harvested windows)"
"$BIN" eval sae --sae "$SAE" --model smollm2-135m --dtype auto --tokens 8192 \
  --skip-windows "$windows" --out "$OUT/eval.json"

echo "== 4/4 label: feature dictionary from 200k harvested tokens"
"$BIN" label --sae "$SAE" --model smollm2-135m --dtype auto --store "$OUT/acts" \
  --tokens 200000 --out "$OUT/dictionary"
"$BIN" features sample --dict "$OUT/dictionary" --n 5 --words 5

echo
echo "plots:"
echo "  training curves:          $SAE/training_curves.svg"
echo "  feature density (train):  $SAE/feature_density.svg"
echo "  feature density (eval):   $OUT/eval.svg"
echo "SAE (SAELens layout):       $SAE"
echo "feature browser:            $OUT/dictionary/index.html"
