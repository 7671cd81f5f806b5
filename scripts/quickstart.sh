#!/usr/bin/env bash
# Sets up what is missing and runs the main job on the default model
# (SmolLM2-135M-Instruct from its GGUF): next-token log-probs and a streamed,
# chat-formatted generation.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
BIN="$ROOT/target/release/saescope"
echo "== saescope logits --model smollm2-135m --prompt 'The capital of France is'"
"$BIN" logits --model smollm2-135m --prompt "The capital of France is" --top-k 5
echo "== saescope generate --chat"
"$BIN" generate --model smollm2-135m --chat --max-new-tokens 64 \
  --prompt "Explain in two sentences what a sparse autoencoder is."
