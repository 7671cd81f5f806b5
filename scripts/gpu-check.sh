#!/usr/bin/env bash
# The CUDA path of saescope, proven in one command on a machine with an NVIDIA GPU
# and this project's torch pin (2.11.0+cu130). Prepared and dry-run on the CPU
# (where it stops after step 2, saying why); budget: under 10 minutes on 16 cores.
#
#     bash scripts/gpu-check.sh            # results in eval/results/gpu/
#
# 1. the machine: nvidia-smi and `saescope info --json`;
# 2. builds with libtorch from the Python torch there (its CUDA half included);
# 3. runs tests/cuda.rs, whose tests CPU CI lists as ignored ("needs a CUDA
#    device") and which fail here, naming why, if the device is missing: CUDA f32 logits against the CPU within 1e-4 on the tiny
#    fixture models, SmolLM2 in bf16 on CUDA against f32 (when the model is in the
#    cache), a harvest store, a short TopK training run, steered generation;
#    then NCCL: the one-rank collectives test (tests/dist.rs) and `saescope
#    launch` training a TopK SAE on the tiny Llama's store over NCCL with 1
#    rank, and with 2 when there are 2 GPUs (both must reach the same FVU);
# 4. the GPU benchmarks against transformers (forward, generation) and sparsify
#    (TopK training) on the same GPU in the same run, when the model, the store and
#    sparsify are there, each skipped with its reason otherwise.
# Exit status: 0 all ran and passed, 1 a check failed, 2 no GPU or no toolchain.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RESULTS="${GPU_RESULTS:-$ROOT/eval/results/gpu}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu-check.log"
: >"$LOG"
START=$(date +%s)
say() { printf '[gpu-check %4ds] %s\n' "$(( $(date +%s) - START ))" "$*" | tee -a "$LOG" >&2; }
run() { say "\$ $*"; "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }
FAILED=0

# 1. The machine -----------------------------------------------------------------------
if command -v nvidia-smi >/dev/null; then
  run nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv || true
else
  say "nvidia-smi not found: no NVIDIA driver on this machine"
fi

# 2. Build against the Python torch of this machine ------------------------------------
PY="${PYTHON:-}"
for candidate in "$ROOT/.venv/bin/python" python3; do
  [ -n "$PY" ] && break
  if "$candidate" -c "import torch" 2>/dev/null; then PY="$candidate"; fi
done
if [ -z "$PY" ]; then say "no Python with torch found (set PYTHON=...)"; exit 2; fi
TORCH_DIR="$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
say "torch $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)') at $TORCH_DIR"
export LIBTORCH="$TORCH_DIR" LIBTORCH_BYPASS_VERSION_CHECK=1
export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! command -v cargo >/dev/null; then
  say "cargo not found: install Rust (rustup) or run scripts/setup.sh first"; exit 2
fi
run cargo build --release --all-targets --quiet || { say "build failed"; exit 1; }
BIN="$ROOT/target/release/saescope"
"$BIN" info --json >"$RESULTS/info.json" 2>>"$LOG"
run "$BIN" info
if ! "$PY" -c 'import sys, json; sys.exit(0 if json.load(open(sys.argv[1]))["cuda"]["libtorch_devices"] > 0 else 1)' "$RESULTS/info.json"; then
  say "libtorch sees no CUDA device here: nothing to check (see info above)"; exit 2
fi

# 3. Every test that needs CUDA -----------------------------------------------------------
run cargo test --release --test cuda -- --ignored --nocapture --test-threads 1 \
  || { say "CUDA tests FAILED"; FAILED=1; }

# 3b. NCCL ---------------------------------------------------------------------------------
run cargo test --release --test dist nccl -- --nocapture || { say "NCCL test FAILED"; FAILED=1; }
NCCL_DIR="$(mktemp -d)"
"$PY" - "$NCCL_DIR/corpus.txt" <<'PY'
import random, sys
random.seed(0)
words = "the model reads a window of tokens and writes its activations to disk".split()
with open(sys.argv[1], "w") as f:
    for _ in range(400):
        f.write(" ".join(random.choice(words) for _ in range(60)) + "\n\n")
PY
run "$BIN" harvest --model tests/fixtures/tiny/llama --corpus "$NCCL_DIR/corpus.txt" \
    --hook blocks.1.hook_resid_post --context 16 --tokens 8000 --shard-tokens 1000 \
    --out "$NCCL_DIR/acts" >/dev/null || { say "tiny harvest FAILED"; FAILED=1; }
GPUS=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
nccl_train() { # $1 = ranks
  run "$BIN" launch --nproc "$1" --master-port $((29600 + $1)) -- train --store "$NCCL_DIR/acts" \
      --hook blocks.1.hook_resid_post --tokens 8192 --batch-size 256 --architecture topk \
      --expansion 4 --k 8 --read-shares 2 \
      --devices cuda:0 --checkpoint-every 0 --out "$NCCL_DIR/run$1" \
    | tee "$NCCL_DIR/run$1.log"
}
if nccl_train 1; then
  if [ "$GPUS" -ge 2 ]; then
    nccl_train 2 || { say "NCCL training on 2 GPUs FAILED"; FAILED=1; }
    fvu() { awk '/blocks.1.hook_resid_post-topk/ {print $2}' "$NCCL_DIR/run$1.log"; }
    say "NCCL FVU: 1 rank $(fvu 1), 2 ranks $(fvu 2)"
    "$PY" -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(0 if abs(a - b) < 1e-3 else 1)" \
        "$(fvu 1)" "$(fvu 2)" || { say "NCCL: 1 and 2 ranks differ"; FAILED=1; }
  else
    say "one GPU: NCCL ran at world size 1 only"
  fi
else
  say "NCCL training FAILED"; FAILED=1
fi
rm -rf "$NCCL_DIR"

# 4. Benchmarks on the GPU, both sides in the same run ------------------------------------
if [ -f "$ROOT/.cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf" ] \
   && "$PY" -c "import transformers, gguf" 2>/dev/null; then
  run timeout 240 "$PY" eval/bench/runtime.py --device cuda:0 --dtype bf16 --rounds 1 \
      --results-dir "$RESULTS" || { say "runtime benchmark failed"; FAILED=1; }
else
  say "skipping the runtime benchmark: it needs the SmolLM2 GGUF in .cache/models and transformers + gguf"
fi
STORE="${GPU_BENCH_STORE:-$ROOT/out/quickstart/acts}"
REF_PY="$ROOT/.cache/venv-sae-ref/bin/python"
if [ -f "$STORE/manifest.json" ] && [ -x "$REF_PY" ] && "$REF_PY" -c "import sparsify" 2>/dev/null; then
  run timeout 240 "$REF_PY" eval/bench/sae_train.py --store "$STORE" --device cuda:0 \
      --train-tokens 524288 --held-out-tokens 65536 --out "$RESULTS/sae-train-cuda.json" \
      || { say "training benchmark failed"; FAILED=1; }
else
  say "skipping the training benchmark: it needs a store ($STORE) and sparsify (scripts/setup_sae_reference.sh)"
fi

say "done in $(( $(date +%s) - START )) s; log and records in $RESULTS"
exit "$FAILED"
