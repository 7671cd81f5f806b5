#!/usr/bin/env bash
# Every benchmark against its peer, side by side, at the native CPU tier and at
# emulated AVX2 (both sides: ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA,
# MKL_ENABLE_INSTRUCTIONS, SAESCOPE_CPU), each at the dtype `auto` picks there.
# Records go to eval/results/ with the machine's facts; run after
# `bash scripts/quickstart.sh`, whose store the training benchmark reads.
#
#     bash eval/bench/tiers.sh [native avx2 ...]     # default: native avx2
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
REF_PY="$(bash scripts/setup_sae_reference.sh)"
STORE="${BENCH_STORE:-$ROOT/out/quickstart/acts}"
[ -f "$STORE/manifest.json" ] || { echo "no store at $STORE: run scripts/quickstart.sh first" >&2; exit 1; }
tiers=("$@")
[ ${#tiers[@]} -gt 0 ] || tiers=(native avx2)
for tier in "${tiers[@]}"; do
  echo "== tier $tier: forward and generation against transformers"
  "$PY" eval/bench/runtime.py --cpu-tier "$tier" --dtype auto --rounds 2
  echo "== tier $tier: harvest against transformers"
  "$PY" eval/bench/harvest.py --cpu-tier "$tier" --dtype auto --rounds 2 \
    --out "eval/results/harvest-auto-$tier.json"
  echo "== tier $tier: TopK training against sparsify"
  "$REF_PY" eval/bench/sae_train.py --cpu-tier "$tier" --dtype auto --store "$STORE" \
    --train-tokens 917504 --out "eval/results/sae-train-auto-$tier.json"
done
