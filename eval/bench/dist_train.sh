#!/usr/bin/env bash
# Data-parallel SAE training on the CPU: 2 processes × 1 thread (`saescope
# launch`, Gloo over loopback) against 1 process × 2 threads, the same TopK
# SAE (x16, k = 32) on the same stored activations, run one after the other.
# Prints the scaling efficiency (2-process throughput over 1-process) and the
# bytes each rank all-reduces per step, and appends a JSON record with the
# machine's facts to eval/results/dist-train.jsonl.
#
#     bash eval/bench/dist_train.sh [STORE] [TOKENS]
#     # default: the quickstart's store (out/quickstart/acts), 131072 tokens
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export LIBTORCH="${LIBTORCH:-$ROOT/.cache/libtorch}"
cargo build --release --quiet --bin saescope
BIN=target/release/saescope
STORE="${1:-out/quickstart/acts}"
TOKENS="${2:-131072}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
ARGS=(train --store "$STORE" --tokens "$TOKENS" --architecture topk --expansion 16 --k 32
      --checkpoint-every 0)
rate() { sed -n 's/.*(\([0-9.]*\) tokens\/s per SAE).*/\1/p' "$1"; }
"$BIN" "${ARGS[@]}" --threads 2 --out "$TMP/one" > "$TMP/one.log" 2>&1
"$BIN" launch --nproc 2 --master-port 29731 -- "${ARGS[@]}" --threads 1 --out "$TMP/two" \
  > "$TMP/two.log" 2>&1
python3 - "$TMP" "$BIN" "$STORE" "$TOKENS" <<'PY'
import json, re, subprocess, sys
from pathlib import Path
tmp, binary, store, tokens = sys.argv[1:]
def rate(name):
    text = Path(tmp, f"{name}.log").read_text()
    return float(re.search(r"\(([0-9.]+) tokens/s per SAE\)", text).group(1))
one, two = rate("one"), rate("two")
cfg = json.loads(next(Path(tmp, "one").glob("*/cfg.json")).read_text())
d_in, d_sae = cfg["d_in"], cfg["d_sae"]
# Every trainable tensor is all-reduced once per step: W_enc, W_dec, b_enc, b_dec (f32).
grad_bytes = 4 * (2 * d_sae * d_in + d_sae + d_in)
record = {
    "benchmark": "dist-train", "store": store, "tokens": int(tokens),
    "architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": 32,
    "one_process_two_threads_tokens_per_s": one,
    "two_processes_one_thread_tokens_per_s": two,
    "scaling_efficiency": two / one,
    "all_reduced_bytes_per_step_per_rank": grad_bytes,
    "machine": json.loads(subprocess.run([binary, "info", "--json"], capture_output=True, text=True).stdout),
}
with open("eval/results/dist-train.jsonl", "a") as f:
    f.write(json.dumps(record) + "\n")
print(f"1 process x 2 threads: {one:,.0f} tok/s; 2 processes x 1 thread: {two:,.0f} tok/s; "
      f"efficiency {two / one:.2f}; all-reduced per step per rank {grad_bytes / 1e6:.1f} MB")
PY
