"""Writes the seed corpora for the fuzz targets into fuzz/corpus/<target>/.

Seeds are the project's real fixtures (tiny HF models, SAE folders, task and
prompt files, training configs, corpora), a store and an intervention file
written by the saescope binary from the tiny Llama fixture, tiny GGUF models
written here from that fixture, quantised blocks taken from the default
model, and the default model's GGUF header. Multi-file inputs use the layout
of `split_files` in fuzz/src/lib.rs: each file but the last after a 4-byte
little-endian length.

Usage: python fuzz/make_seeds.py SAESCOPE_BINARY DEFAULT_GGUF
"""

import gzip
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = ROOT / "fuzz" / "corpus"


def join_files(*files: bytes) -> bytes:
    out = b""
    for i, f in enumerate(files):
        if i + 1 < len(files):
            out += struct.pack("<I", len(f))
        out += f
    return out


def seed(target: str, name: str, data: bytes) -> None:
    folder = OUT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def tiny_llama_gguf(path: Path, quantised: bool, shapes: dict | None = None) -> None:
    """The tiny Llama fixture as a GGUF: its config, its byte-level BPE
    tokenizer, and its weights in F32 (or in a mix of block formats).
    `shapes` overrides the shape written for named tensors, data unchanged."""
    shapes = shapes or {}
    cfg = json.loads((FIXTURES / "tiny/llama/config.json").read_text())
    tok = json.loads((FIXTURES / "tiny/llama/tokenizer.json").read_text())
    weights = {}
    for shard in sorted((FIXTURES / "tiny/llama").glob("model-*.safetensors")):
        weights.update(load_file(shard))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_tokenizer_model("gpt2")
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([1] * len(vocab))
    merges = tok["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "self_attn.q_proj": ("attn_q", gguf.GGMLQuantizationType.F16),
        "self_attn.k_proj": ("attn_k", gguf.GGMLQuantizationType.BF16),
        "self_attn.v_proj": ("attn_v", gguf.GGMLQuantizationType.Q4_0),
        "self_attn.o_proj": ("attn_output", gguf.GGMLQuantizationType.Q4_1),
        "mlp.gate_proj": ("ffn_gate", gguf.GGMLQuantizationType.Q8_0),
        "mlp.up_proj": ("ffn_up", gguf.GGMLQuantizationType.Q8_0),
        "mlp.down_proj": ("ffn_down", gguf.GGMLQuantizationType.Q4_0),
        "input_layernorm": ("attn_norm", None),
        "post_attention_layernorm": ("ffn_norm", None),
    }
    for hf_name, tensor in sorted(weights.items()):
        qtype = None
        name = names.get(hf_name)
        if name is None:
            parts = hf_name.split(".")
            layer, rest = parts[2], ".".join(parts[3:-1])
            short, qtype = per_layer[rest]
            name = f"blk.{layer}.{short}.weight"
        data = tensor.astype(np.float32)
        if quantised and qtype is not None:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, data, raw_shape=shapes.get(name))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_seeds(work: Path, default_gguf: Path) -> None:
    for quantised in (False, True):
        path = work / f"tiny-{'mixed' if quantised else 'f32'}.gguf"
        tiny_llama_gguf(path, quantised)
        data = path.read_bytes()
        for target in ("gguf_container", "gguf_model", "gguf_tokenizer"):
            seed(target, path.name, data)
    # The default model's header with its metadata (config and tokenizer)
    # and no tensors: the whole file is 98 MB, too big a seed.
    reader = gguf.GGUFReader(str(default_gguf))
    kv_end = max(f.offset + sum(p.nbytes for p in f.parts) for f in reader.fields.values())
    raw = default_gguf.open("rb").read(kv_end)
    header = raw[:8] + struct.pack("<Q", 0) + raw[16:]
    for target in ("gguf_container", "gguf_tokenizer"):
        seed(target, "default-model-metadata.gguf", header)
    # Dequantisation: a few real blocks of each type the default model uses,
    # and blocks quantised here for the other types saescope reads.
    taken = set()
    for t in reader.tensors:
        ty = t.tensor_type
        if ty in taken:
            continue
        taken.add(ty)
        block, size = gguf.GGML_QUANT_SIZES[ty]
        blocks = 4 if block > 1 else 64
        data = bytes(np.asarray(t.data).tobytes()[: blocks * size])
        seed("dequant", f"default-{ty.name}", bytes([ty.value]) + struct.pack("<H", blocks * block) + data)
    rng = np.random.default_rng(0)
    values = rng.standard_normal((2, 256)).astype(np.float32)
    for ty in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16,
               gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q8_0,
               gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K):
        try:
            data = gguf.quants.quantize(values, ty).tobytes()
        except NotImplementedError:  # gguf-py writes no K-quants: random blocks
            block, size = gguf.GGML_QUANT_SIZES[ty]
            data = rng.integers(0, 256, values.size // block * size, dtype=np.uint8).tobytes()
        seed("dequant", f"quantised-{ty.name}", bytes([ty.value]) + struct.pack("<H", values.size) + data)


def file_seeds(binary: Path, work: Path) -> None:
    for family in ("qwen2", "gpt2", "neox"):
        d = FIXTURES / "tiny" / family
        seed("hf_model", family, join_files((d / "config.json").read_bytes(), (d / "model.safetensors").read_bytes()))
    for d in sorted((FIXTURES / "sae").iterdir()):
        for selector, name in ((0, "sae_weights.safetensors"), (1, "sae.safetensors")):
            if (d / name).is_file():
                seed("sae_folder", d.name, bytes([selector]) + join_files((d / "cfg.json").read_bytes(), (d / name).read_bytes()))
    def head(path: Path, n: int) -> bytes:
        return "".join(path.read_text().splitlines(keepends=True)[:n]).encode()
    for path in sorted((ROOT / "eval" / "icl").glob("*.jsonl")) + [ROOT / "eval/patching/ioi.jsonl", ROOT / "eval/patching/persona_train.jsonl"]:
        seed("task_jsonl", f"prompts-{path.stem}", b"\x00" + head(path, 12))
    for path in sorted((ROOT / "eval" / "tasks").glob("*/train.jsonl")):
        seed("task_jsonl", f"task-{path.parent.name}", b"\x01" + head(path, 12))
    for path in [ROOT / "configs/defaults.toml"] + sorted((ROOT / "train").glob("*.toml")):
        seed("train_toml", path.stem, path.read_bytes())
    text = (ROOT / "README.md").read_text()[:3000]
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    jsonl = "".join(json.dumps({"text": p}) + "\n" for p in paragraphs).encode()
    seed("corpus", "text", b"\x00" + text.encode())
    seed("corpus", "jsonl", b"\x01" + jsonl)
    seed("corpus", "gzip", b"\x02" + gzip.compress(jsonl, mtime=0))

    corpus = work / "corpus.txt"
    corpus.write_text("\n\n".join(paragraphs * 4))
    store = work / "acts"
    run(binary, "harvest", "--model", str(FIXTURES / "tiny/llama"), "--corpus", str(corpus),
        "--hook", "blocks.1.hook_resid_post", "--context", "16", "--tokens", "128",
        "--shard-tokens", "128", "--out", str(store))
    seed("store", "tiny-llama", join_files((store / "manifest.json").read_bytes(), (store / "shard-00000.safetensors").read_bytes()))

    # Targets the tiny tokenizer keeps as one token each.
    task = work / "task.jsonl"
    task.write_text(
        '{"prompt": "the model reads a", "target": " the", "foil": " model"}\n'
        '{"prompt": "a window of tokens", "target": " capital", "foil": " feature"}\n'
    )
    seed("task_jsonl", "task-tiny", b"\x01" + task.read_bytes())
    for method in ("activation-scaling", "dyn-scalar", "steering-vector", "mean-difference"):
        out = work / f"{method}.json"
        run(binary, "steer", "learn", "--method", method, "--task", str(task),
            "--model", str(FIXTURES / "tiny/llama"), "--epochs", "1", "--out", str(out))
        seed("intervention", method, join_files(out.read_bytes(), out.with_suffix(".safetensors").read_bytes()))


def run(binary: Path, *args: str) -> None:
    subprocess.run([str(binary), *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    binary, default_gguf = Path(sys.argv[1]), Path(sys.argv[2])
    shutil.rmtree(OUT, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gguf_seeds(work, default_gguf)
        file_seeds(binary, work)
    for folder in sorted(OUT.iterdir()):
        files = list(folder.iterdir())
        print(f"{folder.name:16} {len(files):3} seeds, {sum(f.stat().st_size for f in files):>9} bytes")


if __name__ == "__main__":
    main()
