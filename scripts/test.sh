#!/usr/bin/env bash
# Sets up what is missing (torch wheel, default model, corpora, chromium) and runs every test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --no-build --browser
export LIBTORCH="${LIBTORCH:-${SAESCOPE_CACHE:-$ROOT/.cache}/libtorch}"
cargo test --release --all-targets 2>&1
