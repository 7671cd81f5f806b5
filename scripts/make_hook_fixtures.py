#!/usr/bin/env python3
"""Transformers' internals of layer 0 of each tiny fixture model, for the hooks
`ln1.hook_normalized`, `attn.hook_q/k/v`, `attn.hook_z` and `ln2.hook_normalized`.

    .venv/bin/python scripts/make_hook_fixtures.py

Reads the models and `input_ids` that scripts/make_fixtures.py wrote under
tests/fixtures/tiny/{llama,qwen2,gpt2,neox}/ and writes `hooks_reference.safetensors`
beside them, all f32 with T positions and the TransformerLens layouts:

ln1.0   [2, T, d]              the attention's input norm output (gain included)
q.0     [2, T, n_heads, d_head]    queries before rotary embeddings
k.0     [2, T, n_kv_heads, d_head] keys before rotary embeddings
v.0     [2, T, n_kv_heads, d_head] values
z.0     [2, T, n_heads, d_head]    the input of the output projection, per head
ln2.0   [2, T, d]              the MLP's input norm output (gain included)

The projections are read with forward hooks: `q_proj`/`k_proj`/`v_proj` (Llama,
Qwen2), `c_attn` split in three (GPT-2), `query_key_value` viewed as
[heads, 3·d_head] per position and split (GPT-NeoX); z is the input of
`o_proj`/`c_proj`/`dense`.
"""
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny"


def modules(model, name):
    """(ln1, ln2, attention, output projection) of layer 0."""
    if name == "gpt2":
        block = model.transformer.h[0]
        return block.ln_1, block.ln_2, block.attn, block.attn.c_proj
    if name == "neox":
        block = model.gpt_neox.layers[0]
        return block.input_layernorm, block.post_attention_layernorm, block.attention, block.attention.dense
    block = model.model.layers[0]
    return block.input_layernorm, block.post_attention_layernorm, block.self_attn, block.self_attn.o_proj


@torch.no_grad()
def capture(name: str) -> dict[str, torch.Tensor]:
    folder = ROOT / name
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cfg = model.config
    input_ids = load_file(str(folder / "reference.safetensors"))["input_ids"]
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    d_model = getattr(cfg, "hidden_size", None) or cfg.n_embd
    d_head = getattr(cfg, "head_dim", None) or d_model // n_heads
    b, t = input_ids.shape
    got: dict[str, torch.Tensor] = {}
    keep = lambda key: (lambda m, i, o: got.__setitem__(key, (o[0] if isinstance(o, tuple) else o).clone()))
    ln1, ln2, attn, out_proj = modules(model, name)
    handles = [
        ln1.register_forward_hook(keep("ln1.0")),
        ln2.register_forward_hook(keep("ln2.0")),
        out_proj.register_forward_hook(lambda m, i, o: got.__setitem__("z.0", i[0].clone())),
    ]
    if name == "gpt2":
        handles.append(attn.c_attn.register_forward_hook(keep("qkv")))
    elif name == "neox":
        handles.append(attn.query_key_value.register_forward_hook(keep("qkv")))
    else:
        for key, proj in [("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj)]:
            handles.append(proj.register_forward_hook(keep(key)))
    model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    for h in handles:
        h.remove()
    if name == "gpt2":
        q, k, v = got.pop("qkv").split(d_model, dim=-1)
    elif name == "neox":
        q, k, v = got.pop("qkv").view(b, t, n_heads, 3 * d_head).split(d_head, dim=-1)
    else:
        q, k, v = got.pop("q"), got.pop("k"), got.pop("v")
    out = {
        "ln1.0": got["ln1.0"],
        "ln2.0": got["ln2.0"],
        "q.0": q.reshape(b, t, n_heads, d_head),
        "k.0": k.reshape(b, t, n_kv, d_head),
        "v.0": v.reshape(b, t, n_kv, d_head),
        "z.0": got["z.0"].reshape(b, t, n_heads, d_head),
    }
    return {k: v.float().contiguous() for k, v in out.items()}


def main() -> None:
    for name in ["llama", "qwen2", "gpt2", "neox"]:
        ref = capture(name)
        save_file(ref, str(ROOT / name / "hooks_reference.safetensors"))
        print(name, {k: list(v.shape) for k, v in ref.items()})


if __name__ == "__main__":
    main()
