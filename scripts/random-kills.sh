#!/usr/bin/env bash
# The full random-kill check: harvest, training and labelling SIGKILLed at 20 seeded
# moments each (CI runs 3), resumed after every kill, compared byte for byte
# with an uninterrupted run (tests/random_kills.rs). Seeds 0..N-1.
#
#     bash scripts/random-kills.sh [SEEDS]       # default 5
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export LIBTORCH="${LIBTORCH:-$ROOT/.cache/libtorch}"
for seed in $(seq 0 $(( ${1:-5} - 1 ))); do
  echo "== seed $seed"
  SAESCOPE_KILL_SEED=$seed SAESCOPE_KILL_POINTS=20 \
    cargo test --release --quiet --test random_kills -- --nocapture 2>&1 | grep -E "kills landed|test result|panicked|differs|ended"
done
