"""Writes the crafted inputs of crashes reported before the fuzz campaigns
into fuzz/regressions/<target>/, in the harnesses' input layout, so that
tests/fuzz_regressions.rs replays them with the crashes the campaigns find.

- hf_model/qwen2-k-proj-one-column-too-wide: the tiny Qwen2 fixture with one
  input column too many in layer 0's k_proj (it panicked in Tensor::cat).
- gguf_model/attn-q-dim-changed-to-1: the tiny Llama GGUF with one dimension
  of blk.0.attn_q.weight set to 1 in the header, data unchanged (it panicked
  in a reshape inside tch's generated wrappers).

Usage: python fuzz/make_regressions.py
"""

import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from make_seeds import FIXTURES, ROOT, join_files, tiny_llama_gguf

OUT = ROOT / "fuzz" / "regressions"


def main() -> None:
    qwen2 = FIXTURES / "tiny" / "qwen2"
    weights = load_file(qwen2 / "model.safetensors")
    name = "model.layers.0.self_attn.k_proj.weight"
    rows, cols = weights[name].shape
    weights[name] = np.concatenate([weights[name], np.zeros((rows, 1), weights[name].dtype)], axis=1)
    folder = OUT / "hf_model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qwen2-k-proj-one-column-too-wide").write_bytes(
        join_files((qwen2 / "config.json").read_bytes(), save(weights))
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.gguf"
        # raw_shape is in numpy order, [out, in]: the input dimension becomes 1.
        tiny_llama_gguf(path, False, {"blk.0.attn_q.weight": [64, 1]})
        folder = OUT / "gguf_model"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "attn-q-dim-changed-to-1").write_bytes(path.read_bytes())


if __name__ == "__main__":
    main()
