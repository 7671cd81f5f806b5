#!/usr/bin/env bash
# Creates the reference-SAE venv at .cache/venv-sae-ref (idempotent: skips what is present)
# and prints its python path on stdout. It holds the Python SAE libraries that the SAE
# fixtures (scripts/make_sae_fixtures.py) and the training benchmark (eval/bench/sae_train.py)
# compare against:
#     sae-lens 6.54.12, eai-sparsify 1.3.3
# torch and transformers are NOT installed a second time: a .pth file puts the main venv's
# site-packages (.venv, torch==2.11.0, see scripts/setup.sh) behind this venv's own, so pip
# sees them as installed and only adds the remaining dependencies here. The main venv is
# never written to.
#
#     scripts/setup_sae_reference.sh            # prints .../venv-sae-ref/bin/python
#     "$(scripts/setup_sae_reference.sh)" scripts/make_sae_fixtures.py
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SAESCOPE_CACHE:-$ROOT/.cache}"
MAIN_VENV="$ROOT/.venv"
VENV="$CACHE/venv-sae-ref"
SAE_LENS_VERSION="6.54.12"
SPARSIFY_VERSION="1.3.3"

say() { printf '[setup-sae-ref] %s\n' "$*" >&2; }

if [ ! -x "$MAIN_VENV/bin/python" ] || ! "$MAIN_VENV/bin/python" -c "import torch" 2>/dev/null; then
  say "the main venv ($MAIN_VENV) with torch is missing: run scripts/setup.sh --reference --no-build first"
  exit 1
fi
MAIN_SITE="$("$MAIN_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# The venv must use the same interpreter as the main venv (the .pth shares compiled wheels).
BASE_PY="$("$MAIN_VENV/bin/python" -c 'import sys, os; print(os.path.realpath(sys.executable))')"

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$BASE_PY" -m venv "$VENV"
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PTH="$SITE/_saescope_main_venv.pth"
if [ ! -f "$PTH" ] || [ "$(cat "$PTH")" != "$MAIN_SITE" ]; then
  echo "$MAIN_SITE" > "$PTH"
fi

have() {
  "$VENV/bin/python" - "$SAE_LENS_VERSION" "$SPARSIFY_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
ok = version("sae-lens") == sys.argv[1] and version("eai-sparsify") == sys.argv[2]
sys.exit(0 if ok else 1)
PY
}
if have; then
  say "sae-lens $SAE_LENS_VERSION and eai-sparsify $SPARSIFY_VERSION present"
else
  say "installing sae-lens==$SAE_LENS_VERSION eai-sparsify==$SPARSIFY_VERSION (torch reused from $MAIN_VENV)"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "sae-lens==$SAE_LENS_VERSION" "eai-sparsify==$SPARSIFY_VERSION" >&2
  have || { say "install did not give the pinned versions"; exit 1; }
fi
# Refuse a venv whose torch is not the main venv's (it would mean pip pulled a second one).
"$VENV/bin/python" - "$MAIN_SITE" <<'PY' >&2
import sys, torch
assert torch.__file__.startswith(sys.argv[1]), f"torch comes from {torch.__file__}, not the main venv"
PY
echo "$VENV/bin/python"
