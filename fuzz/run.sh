#!/usr/bin/env bash
# A fuzzing campaign: builds every target in fuzz/ with cargo-fuzz (libFuzzer,
# nightly), writes the seed corpora, runs each target for SECONDS (default 600)
# or 1,000,000 executions, whichever comes first, JOBS at a time (default 1),
# and prints executions, coverage and crashes per target. Crashing inputs are
# left in fuzz/artifacts/<target>/; copy each into fuzz/regressions/<target>/
# once fixed, and tests/fuzz_regressions.rs replays it in the normal suite.
#
# usage: bash fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECONDS_PER_TARGET="${1:-600}"
shift || true
JOBS="${JOBS:-1}"
RUNS="${RUNS:-1000000}"
export LIBTORCH="${LIBTORCH:-${SAESCOPE_CACHE:-$ROOT/.cache}/libtorch}"

bash scripts/setup.sh --no-build >/dev/null
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
cargo build --release --bin saescope
MODEL="$(ls "${SAESCOPE_CACHE:-$ROOT/.cache}"/models/smollm2-135m/*.gguf | head -1)"
.venv/bin/python fuzz/make_seeds.py target/release/saescope "$MODEL"
(cd fuzz && cargo +nightly fuzz build -s none -O)

TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(cd fuzz && cargo +nightly fuzz list)
fi
LOGS="fuzz/logs"
mkdir -p "$LOGS"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

run_target() {
  local target="$1"
  local bin="fuzz/target/x86_64-unknown-linux-gnu/release/$target"
  # The seeds stay as written; what the fuzzer learns goes to a working copy.
  local work="$SCRATCH/corpus-$target"
  mkdir -p "$work" "fuzz/artifacts/$target" "$SCRATCH/tmp-$target"
  TMPDIR="$SCRATCH/tmp-$target" "$bin" "$work" "fuzz/corpus/$target" \
    -max_total_time="$SECONDS_PER_TARGET" -runs="$RUNS" -timeout=20 \
    -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/" >"$LOGS/$target.log" 2>&1 || true
}
export -f run_target
export SECONDS_PER_TARGET RUNS SCRATCH LOGS
printf '%s\n' "${TARGETS[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_target {}'

printf '\n%-16s %12s %10s %8s %8s %8s  %s\n' target executions exec/s seconds cov ft crashes
for target in "${TARGETS[@]}"; do
  log="$LOGS/$target.log"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  crashes=$(find "fuzz/artifacts/$target" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | wc -l)
  printf '%-16s %12s %10s %8s %8s %8s  %s\n' "$target" "$execs" "$speed" "$secs" "$cov" "$ft" "$crashes"
done
echo "logs: $LOGS/<target>.log; crashing inputs: fuzz/artifacts/<target>/"
