#!/usr/bin/env bash
# Multi-process SAE training on the CPU: 2 processes × 1 thread (`saescope
# launch`, Gloo over loopback) against 1 process × 2 threads, run one after
# the other on the same stored activations, for
#
#   data parallel:         one TopK SAE (x16, k 32) on the quickstart's store;
#   module distribution:   two TopK SAEs, one per hook (blocks.6 and blocks.8
#                          resid_post of SmolLM2), one per rank, rows moved by
#                          all-to-all and, as sparsify does, by all-gather.
#
# Prints each scaling efficiency (2-process throughput over 1-process) and the
# bytes each rank sends per step, and appends JSON records with the machine's
# facts to eval/results/dist-train.jsonl.
#
#     bash eval/bench/dist_train.sh [TOKENS]     # default 131072 tokens per SAE
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export LIBTORCH="${LIBTORCH:-$ROOT/.cache/libtorch}"
cargo build --release --quiet --bin saescope
BIN=target/release/saescope
TOKENS="${1:-131072}"
ONE_HOOK="out/quickstart/acts"
TWO_HOOKS="out/bench/acts-blocks-6-8"
[ -f "$ONE_HOOK/manifest.json" ] || { echo "run scripts/quickstart.sh first (it harvests $ONE_HOOK)"; exit 2; }
if [ ! -f "$TWO_HOOKS/blocks.8.hook_resid_post/manifest.json" ]; then
  "$BIN" harvest --model smollm2-135m --model-dtype f32 --hook blocks.6.hook_resid_post \
    --hook blocks.8.hook_resid_post --tokens "$TOKENS" --shard-tokens 16384 --out "$TWO_HOOKS"
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
COMMON=(--tokens "$TOKENS" --architecture topk --expansion 16 --k 32 --checkpoint-every 0)
one() { "$BIN" train "$@" --threads 2 --out "$TMP/one" > "$TMP/one.log" 2>&1; rm -rf "$TMP/one"; }
two() { "$BIN" launch --nproc 2 --master-port 29731 -- train "$@" --threads 1 --out "$TMP/two" \
          > "$TMP/two.log" 2>&1; rm -rf "$TMP/two"; }
rate() { sed -n 's/.*(\([0-9.]*\) tokens\/s per SAE).*/\1/p' "$TMP/$1.log" | head -1; }
sent() { sed -n 's/.*moved rows to the SAEs.* ranks: \([0-9]*\) bytes sent per step.*/\1/p' "$TMP/two.log" \
           | awk '{s += $1} END {print s / NR}'; }

DP=(--store "$ONE_HOOK" --hook blocks.8.hook_resid_post "${COMMON[@]}")
one "${DP[@]}"; ONE_DP=$(rate one)
two "${DP[@]}"; TWO_DP=$(rate two)
MOD=(--store "$TWO_HOOKS" --hook blocks.6.hook_resid_post,blocks.8.hook_resid_post "${COMMON[@]}")
one "${MOD[@]}"; ONE_MOD=$(rate one)
two "${MOD[@]}" --distribute-modules --module-exchange all_to_all; TWO_A2A=$(rate two); SENT_A2A=$(sent)
two "${MOD[@]}" --distribute-modules --module-exchange all_gather; TWO_AG=$(rate two); SENT_AG=$(sent)

python3 - "$BIN" "$TOKENS" "$ONE_DP" "$TWO_DP" "$ONE_MOD" "$TWO_A2A" "$SENT_A2A" "$TWO_AG" "$SENT_AG" <<'PY'
import json, subprocess, sys
binary, tokens = sys.argv[1], int(sys.argv[2])
one_dp, two_dp, one_mod, two_a2a, sent_a2a, two_ag, sent_ag = map(float, sys.argv[3:])
d_in, d_sae = 576, 576 * 16
# Data parallel: every trainable tensor (W_enc, W_dec, b_enc, b_dec, f32) is all-reduced each step.
grad_bytes = 4 * (2 * d_sae * d_in + d_sae + d_in)
machine = json.loads(subprocess.run([binary, "info", "--json"], capture_output=True, text=True).stdout)
records = [
    {"benchmark": "dist-train", "mode": "data_parallel", "store": "out/quickstart/acts",
     "tokens": tokens, "architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": 32,
     "one_process_two_threads_tokens_per_s": one_dp, "two_processes_one_thread_tokens_per_s": two_dp,
     "scaling_efficiency": two_dp / one_dp, "all_reduced_bytes_per_step_per_rank": grad_bytes,
     "machine": machine},
    {"benchmark": "dist-train", "mode": "module_distribution", "store": "out/bench/acts-blocks-6-8",
     "tokens": tokens, "saes": 2, "architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": 32,
     "one_process_two_threads_tokens_per_s": one_mod,
     "two_processes_all_to_all_tokens_per_s": two_a2a, "scaling_efficiency_all_to_all": two_a2a / one_mod,
     "two_processes_all_gather_tokens_per_s": two_ag, "scaling_efficiency_all_gather": two_ag / one_mod,
     "bytes_sent_per_step_per_rank_all_to_all": sent_a2a, "bytes_sent_per_step_per_rank_all_gather": sent_ag,
     "machine": machine},
]
with open("eval/results/dist-train.jsonl", "a") as f:
    for r in records:
        f.write(json.dumps(r) + "\n")
print(f"data parallel:       1 process x 2 threads {one_dp:,.0f} tok/s; 2 processes x 1 thread {two_dp:,.0f} tok/s; "
      f"efficiency {two_dp / one_dp:.2f}; all-reduced per step per rank {grad_bytes / 1e6:.1f} MB")
print(f"module distribution: 1 process x 2 threads {one_mod:,.0f} tok/s; 2 processes x 1 thread "
      f"{two_a2a:,.0f} tok/s by all-to-all (efficiency {two_a2a / one_mod:.2f}, {sent_a2a / 1e6:.2f} MB sent per step per rank), "
      f"{two_ag:,.0f} tok/s by all-gather (efficiency {two_ag / one_mod:.2f}, {sent_ag / 1e6:.2f} MB)")
PY
