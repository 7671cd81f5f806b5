#!/usr/bin/env python3
"""Build the test fixtures under tests/fixtures/ (deterministic: fixed seeds).

Run from the repository root:  .venv/bin/python scripts/make_fixtures.py

What it writes
--------------
tests/fixtures/tokenizer/               tiny byte-level BPE tokenizer (vocab 512,
                                        GPT-2 style ByteLevel pre-tokenizer and decoder,
                                        `<|endoftext|>` = id 0 = bos = eos = pad).
tests/fixtures/tiny/<name>/             random-weight HF models, f32, vocab 512,
                                        written with save_pretrained(safe_serialization=True):
    gpt2   GPT2LMHeadModel     n_embd 64, 2 layers, 4 heads, n_positions 64 (tied lm_head)
    llama  LlamaForCausalLM    hidden 64, 2 layers, 4 heads / 2 kv heads (GQA), ffn 128,
                               rope_theta 1e4, untied lm_head, rms eps 1e-5;
                               saved SHARDED (model.safetensors.index.json + >= 2 shards)
    qwen2  Qwen2ForCausalLM    hidden 64, 2 layers, 4 heads / 2 kv heads, qkv bias, ffn 128,
                               tied lm_head
    neox   GPTNeoXForCausalLM  hidden 64, 2 layers, 4 heads, ffn 256, rotary 25 % of
                               head_dim, parallel residual, untied embed_out
  each folder also holds tokenizer.json + tokenizer_config.json and
  reference.safetensors (see REFERENCE KEYS below).
tests/fixtures/smollm2_reference.json   HF reference for SmolLM2-135M-Instruct (GGUF Q4_1,
                                        dequantised to f32 by transformers).

config.json note: transformers 5 writes RoPE settings only as
`rope_parameters: {rope_theta, rope_type, partial_rotary_factor}`. Most configs on the
hub were written by transformers 4 and carry top-level `rope_theta` (and, for GPT-NeoX,
`rotary_pct` / `rotary_emb_base`). We add those legacy keys next to `rope_parameters`
(same values) so loaders that read either form see the same numbers; the script checks
that HF reloads the patched folder and reproduces the logits.

REFERENCE KEYS (reference.safetensors; all float tensors f32, T = 12, d = 64)
-------------------------------------------------------------------------------
input_ids    int64 [2, T]    two fixed sequences of the tiny tokenizer, first token = bos 0
logits       f32   [2, T, 512]
hidden.{i}   f32   [2, T, d] for i = 0..=n_layers, from output_hidden_states=True:
               hidden.0          = embedding output = blocks.0.hook_resid_pre
                                   (GPT-2: token + position embedding)
               hidden.i, 0<i<n   = output of block i-1 = blocks.{i-1}.hook_resid_post
                                   = blocks.{i}.hook_resid_pre
               hidden.{n_layers} = what HF returns last: the FINAL NORM's output
                                   (ln_final.hook_normalized), NOT the last block's
                                   output. The script asserts this.
resid_post.{n_layers-1}  f32 [2, T, d]  the last block's output before the final norm
                                   (blocks.{n-1}.hook_resid_post), captured with a hook.
attn_out.0   f32 [2, T, d]   layer 0's attention block output (after the output
                             projection, before the residual add) = blocks.0.hook_attn_out
mlp_out.0    f32 [2, T, d]   layer 0's MLP output = blocks.0.hook_mlp_out
pattern.0    f32 [2, H, T, T] layer 0's attention probabilities (eager attention,
                             output_attentions=True) = blocks.0.attn.hook_pattern
greedy_ids   int64 [1, T+8]  HF generate, greedy, 8 new tokens from input_ids[0:1]
                             (never stops early: min_new_tokens = max_new_tokens = 8)
llama only (left padding):
pad_input_ids     int64 [2, T]  row 0 = input_ids[0]; row 1 = 3 pad tokens (id 0) then
                                input_ids[1][:T-3]
pad_attention_mask int64 [2, T] 0 on the pads, 1 elsewhere
pad_position_ids  int64 [2, T]  (mask.cumsum(-1) - 1).clamp(min=0), passed explicitly
pad_logits        f32 [2, T, 512] HF forward with that mask and those position ids; only
                                positions where the mask is 1 are meaningful.
The safetensors metadata has one key, "fixture": a JSON string with the texts the input
ids were made from and the library versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
TINY = FIX / "tiny"
TOK_DIR = FIX / "tokenizer"
SMOL_DIR = ROOT / ".cache" / "models" / "smollm2-135m"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

VOCAB = 512
SEQ = 12
N_NEW = 8
EOT = "<|endoftext|>"
INIT_STD = 0.2

torch.use_deterministic_algorithms(True)
torch.set_num_threads(min(2, os.cpu_count() or 1))

# --------------------------------------------------------------------------------------
# a. tokenizer
# --------------------------------------------------------------------------------------

CORPUS = [
    "A sparse autoencoder learns to rewrite the activations of a language model as a "
    "sum of a few directions taken from a large dictionary. Each direction is called a "
    "feature, and a good feature fires on inputs that share one meaning.",
    "The residual stream is the running sum that every attention block and every MLP "
    "block reads from and writes to. Hook points let us read, cache, or replace the "
    "tensor that flows through any of these places during the forward pass.",
    "It was a bright cold day in April, and the clocks were striking thirteen. The "
    "quick brown fox jumps over the lazy dog, while the dog, being lazy, does nothing "
    "at all about it.",
    "In 1984, 12345 people walked from the station to the river; by 2024 there were "
    "67890 of them, and the bridge had been rebuilt twice. Numbers like 3.14159 and "
    "2.71828 appear everywhere in mathematics.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + "
    "fibonacci(n - 2)\n\nfor i in range(10):\n    print(i, fibonacci(i))\n",
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain "
    "is Madrid, and the capital of Germany is Berlin. Rivers run through all of them.",
    "Steering a model means adding a vector to its hidden state so that the text it "
    "writes changes in a chosen way, for example toward talking about the ocean, or "
    "away from talking about weddings.",
]

SENTENCES = [
    "The residual stream is the running sum of every block in the model.",
    "In 1984, the quick brown fox walked to the river and jumped over it.",
]


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=1,
        show_progress=False,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Training data: only the fixed corpus above (not this file, so that editing
    # comments here does not change the tokenizer).
    tok.train_from_iterator(CORPUS, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    assert tok.token_to_id(EOT) == 0
    return tok


def write_tokenizer(tok: Tokenizer, out: Path) -> PreTrainedTokenizerFast:
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        model_max_length=64,
    )
    fast.save_pretrained(str(out))
    # transformers 5 writes tokenizer_class "TokenizersBackend", which older versions do
    # not know; "PreTrainedTokenizerFast" loads in both.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["add_bos_token"] = False
    cfg["add_eos_token"] = False
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    # keep exactly tokenizer.json + tokenizer_config.json
    for extra in ("special_tokens_map.json", "chat_template.jinja"):
        p = out / extra
        if p.exists():
            p.unlink()
    return fast


def encode_fixed(tok: Tokenizer) -> torch.Tensor:
    rows = []
    for s in SENTENCES:
        ids = tok.encode(s).ids
        assert len(ids) >= SEQ - 1, (s, len(ids))
        rows.append([0] + ids[: SEQ - 1])
    return torch.tensor(rows, dtype=torch.int64)


# --------------------------------------------------------------------------------------
# b. tiny models
# --------------------------------------------------------------------------------------

COMMON_IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)


def make_config(name: str):
    if name == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
            n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
            **COMMON_IDS,
        )
    if name == "llama":
        return LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, rope_theta=10000.0,
            max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
            hidden_act="silu", **COMMON_IDS,
        )
    if name == "qwen2":
        return Qwen2Config(
            vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, rope_theta=10000.0,
            max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=True,
            use_sliding_window=False, hidden_act="silu", **COMMON_IDS,
        )
    if name == "neox":
        return GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=256, rotary_pct=0.25, rotary_emb_base=10000,
            max_position_embeddings=64, use_parallel_residual=True, hidden_act="gelu",
            layer_norm_eps=1e-5, attention_bias=True, tie_word_embeddings=False,
            hidden_dropout=0.0, attention_dropout=0.0, **COMMON_IDS,
        )
    raise ValueError(name)


MODEL_CLS = {
    "gpt2": GPT2LMHeadModel,
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "neox": GPTNeoXForCausalLM,
}
SEEDS = {"gpt2": 11, "llama": 22, "qwen2": 33, "neox": 44}


def is_norm_weight(pname: str, p: torch.Tensor) -> bool:
    if p.dim() != 1 or not pname.endswith(".weight"):
        return False
    return any(k in pname for k in ("norm", "ln_", "layernorm"))


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if is_norm_weight(pname, p):
            p.copy_(1.0 + INIT_STD * torch.randn(p.shape, generator=g))
        else:  # matrices, embeddings, biases (norm biases too)
            p.copy_(INIT_STD * torch.randn(p.shape, generator=g))


def layers_of(model, name: str):
    if name == "gpt2":
        return model.transformer.h
    if name == "neox":
        return model.gpt_neox.layers
    return model.model.layers


def final_norm_of(model, name: str):
    if name == "gpt2":
        return model.transformer.ln_f
    if name == "neox":
        return model.gpt_neox.final_layer_norm
    return model.model.norm


def attn_mlp_of(layer, name: str):
    if name == "gpt2":
        return layer.attn, layer.mlp
    if name == "neox":
        return layer.attention, layer.mlp
    return layer.self_attn, layer.mlp


def first(o):
    return o[0] if isinstance(o, (tuple, list)) else o


def patch_config_legacy_keys(folder: Path) -> None:
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict):
        if "rope_theta" in rp and "rope_theta" not in cfg:
            cfg["rope_theta"] = rp["rope_theta"]
        if cfg.get("model_type") == "gpt_neox":
            cfg.setdefault("rotary_pct", rp.get("partial_rotary_factor", 1.0))
            cfg.setdefault("rotary_emb_base", rp.get("rope_theta", 10000.0))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def reference_for(model, name: str, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    cfg = model.config
    n_layers = cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layer
    layers = layers_of(model, name)
    attn0, mlp0 = attn_mlp_of(layers[0], name)
    captured: dict[str, torch.Tensor] = {}
    handles = [
        attn0.register_forward_hook(lambda m, i, o: captured.__setitem__("attn_out.0", first(o).clone())),
        mlp0.register_forward_hook(lambda m, i, o: captured.__setitem__("mlp_out.0", first(o).clone())),
        layers[n_layers - 1].register_forward_hook(
            lambda m, i, o: captured.__setitem__(f"resid_post.{n_layers - 1}", first(o).clone())
        ),
        final_norm_of(model, name).register_forward_hook(
            lambda m, i, o: captured.__setitem__("final_norm", first(o).clone())
        ),
    ]
    out = model(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        output_hidden_states=True,
        output_attentions=True,
        use_cache=False,
    )
    for h in handles:
        h.remove()

    ref: dict[str, torch.Tensor] = {"input_ids": input_ids.clone(), "logits": out.logits.float()}
    hs = out.hidden_states
    assert len(hs) == n_layers + 1, len(hs)
    for i, h in enumerate(hs):
        ref[f"hidden.{i}"] = h.float()
    # Documented convention: HF's last hidden state is the final norm's output.
    assert torch.allclose(hs[-1], captured["final_norm"], atol=1e-6), f"{name}: last hidden != final norm"
    assert not torch.allclose(hs[-1], captured[f"resid_post.{n_layers - 1}"], atol=1e-3)
    ref[f"resid_post.{n_layers - 1}"] = captured[f"resid_post.{n_layers - 1}"].float()
    ref["attn_out.0"] = captured["attn_out.0"].float()
    ref["mlp_out.0"] = captured["mlp_out.0"].float()
    pat = out.attentions[0].float()
    assert pat.shape == (input_ids.shape[0], cfg.num_attention_heads if hasattr(cfg, "num_attention_heads") else cfg.n_head, SEQ, SEQ)
    assert torch.allclose(pat.sum(-1), torch.ones_like(pat.sum(-1)), atol=1e-5)
    ref["pattern.0"] = pat

    # Consistency checks of the hooks against the residual stream.
    # Sequential (h1 = h0 + attn(ln1 h0) + mlp(ln2(h0 + attn))) and parallel residual
    # (NeoX: h1 = h0 + attn(ln1 h0) + mlp(ln2 h0)) both give h1 = h0 + attn_out + mlp_out.
    recon = hs[0] + captured["attn_out.0"] + captured["mlp_out.0"]
    assert torch.allclose(recon, hs[1], atol=1e-4), f"{name}: hidden.1 != hidden.0 + attn + mlp"

    gen = model.generate(
        input_ids=input_ids[0:1],
        attention_mask=torch.ones_like(input_ids[0:1]),
        do_sample=False,
        max_new_tokens=N_NEW,
        min_new_tokens=N_NEW,
        eos_token_id=None,
        pad_token_id=0,
        num_beams=1,
    )
    assert gen.shape == (1, SEQ + N_NEW), gen.shape
    # greedy check: generated tokens equal argmax of a full forward at each step
    full = model(input_ids=gen, attention_mask=torch.ones_like(gen), use_cache=False).logits
    assert torch.equal(full[0, SEQ - 1 : -1].argmax(-1), gen[0, SEQ:]), f"{name}: generate != argmax"
    ref["greedy_ids"] = gen.to(torch.int64)
    return ref


@torch.no_grad()
def padded_reference(model, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    n_pad = 3
    ids = input_ids.clone()
    ids[1] = torch.cat([torch.zeros(n_pad, dtype=torch.int64), input_ids[1, : SEQ - n_pad]])
    mask = torch.ones_like(ids)
    mask[1, :n_pad] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits.float()
    assert torch.isfinite(logits).all()
    # row 0 is unpadded: must equal the unpadded forward; row 1's real positions must equal
    # a forward of the unpadded 9-token sequence.
    ref0 = model(input_ids=input_ids[0:1], attention_mask=torch.ones_like(input_ids[0:1]), use_cache=False).logits
    assert torch.allclose(logits[0], ref0[0], atol=1e-4)
    short = input_ids[1:2, : SEQ - n_pad]
    ref1 = model(input_ids=short, attention_mask=torch.ones_like(short), use_cache=False).logits
    diff = (logits[1, n_pad:] - ref1[0]).abs().max().item()
    assert diff < 1e-4, f"padded forward differs from unpadded by {diff}"
    return {
        "pad_input_ids": ids,
        "pad_attention_mask": mask.to(torch.int64),
        "pad_position_ids": pos.to(torch.int64),
        "pad_logits": logits,
    }


def build_model(name: str, tok: Tokenizer, tok_files: Path, input_ids: torch.Tensor) -> None:
    torch.manual_seed(SEEDS[name])
    cfg = make_config(name)
    model = MODEL_CLS[name]._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    init_weights(model, SEEDS[name])
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.generation_config.bos_token_id = 0

    out = TINY / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    kwargs = {"safe_serialization": True}
    if name == "llama":
        kwargs["max_shard_size"] = "150KB"
    model.save_pretrained(str(out), **kwargs)
    patch_config_legacy_keys(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_files / f, out / f)

    ref = reference_for(model, name, input_ids)
    std = ref["logits"].std().item()
    assert std > 0.5, f"{name}: logits std {std} too small"
    if name == "llama":
        ref.update(padded_reference(model, input_ids))
        shards = sorted(out.glob("model-*.safetensors"))
        assert (out / "model.safetensors.index.json").exists() and len(shards) >= 2, shards

    # reload from disk (patched config) and check that the logits are reproduced
    again = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager")
    again.eval()
    with torch.no_grad():
        l2 = again(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits
    assert torch.allclose(l2, ref["logits"], atol=1e-5), f"{name}: reload mismatch"

    meta = {
        "model": name,
        "texts": json.dumps(SENTENCES),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "note": "hidden.{n_layers} is AFTER the final norm; resid_post.{n_layers-1} is before it",
    }
    # One metadata key only: safetensors writes the metadata map in hash order, so more
    # than one key would make the file's bytes differ from run to run.
    save_file(
        {k: v.contiguous() for k, v in ref.items()},
        str(out / "reference.safetensors"),
        metadata={"fixture": json.dumps(meta, sort_keys=True)},
    )
    size = sum(p.stat().st_size for p in out.iterdir())
    assert size < 1_000_000, f"{name}: {size} bytes"
    nparams = sum(p.numel() for p in model.parameters())
    print(f"  {name:6s} params {nparams:7d}  logits std {std:.3f}  folder {size / 1024:.0f} KiB  "
          f"greedy {ref['greedy_ids'][0, SEQ:].tolist()}")
    print(f"         keys: {sorted(ref.keys())}")


# --------------------------------------------------------------------------------------
# d. SmolLM2 GGUF reference
# --------------------------------------------------------------------------------------

SMOL_PROMPTS = ["The capital of France is", "def fibonacci(n):", "In 1984, 12345 people walked"]
SMOL_BOS = 1


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def smollm2_reference() -> None:
    gguf_path = SMOL_DIR / SMOL_FILE
    if not gguf_path.exists():
        print(f"  SKIP smollm2: {gguf_path} not found", file=sys.stderr)
        return
    tok = AutoTokenizer.from_pretrained(str(SMOL_DIR), gguf_file=SMOL_FILE)
    model = AutoModelForCausalLM.from_pretrained(str(SMOL_DIR), gguf_file=SMOL_FILE, dtype=torch.float32)
    model.eval()

    records = []
    fixed_ids: list[int] | None = None
    lps = []
    for prompt in SMOL_PROMPTS:
        raw = tok(prompt, add_special_tokens=True)["input_ids"]
        plain = tok(prompt, add_special_tokens=False)["input_ids"]
        adds_bos = len(raw) > 0 and raw[0] == SMOL_BOS and (len(plain) == 0 or plain[0] != SMOL_BOS)
        ids = [SMOL_BOS] + [t for t in plain]
        assert ids.count(SMOL_BOS) == 1, ids
        x = torch.tensor([ids], dtype=torch.int64)
        logits = model(input_ids=x, use_cache=False).logits[0, -1].float()
        lp = torch.log_softmax(logits.double(), dim=-1)
        lps.append(lp)
        top = torch.topk(lp, 20)
        if fixed_ids is None:
            fixed_ids = top.indices.tolist()
        records.append({
            "prompt": prompt,
            "tokenizer_adds_bos": bool(adds_bos),
            "ids": ids,
            "top20": [
                {"id": int(i), "token": tok.decode([int(i)]), "logprob": round(float(v), 6)}
                for v, i in zip(top.values.tolist(), top.indices.tolist())
            ],
        })
    for rec, lp in zip(records, lps):
        rec["logprobs_last_at"] = [round(float(lp[i]), 6) for i in fixed_ids]
        rec["logprobs_last_ids_0_100"] = [round(float(v), 6) for v in lp[:100].tolist()]

    doc = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to f32 by transformers)",
        "gguf_file": SMOL_FILE,
        "gguf_sha256": sha256_of(gguf_path),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "bos_id": SMOL_BOS,
        "notes": (
            "ids = [bos 1] + tokenizer ids without special tokens (exactly one BOS). "
            "All values are for the LAST position: log_softmax in float64 of the f32 logits. "
            "logprobs_last_at[j] is the log-prob of fixed_ids[j] (the top 20 of prompt 0); "
            "logprobs_last_ids_0_100[i] is the log-prob of token id i for i in 0..100."
        ),
        "fixed_ids": fixed_ids,
        "prompts": records,
    }
    out = FIX / "smollm2_reference.json"
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    top0 = records[0]["top20"][0]
    print(f"  smollm2: top token for {SMOL_PROMPTS[0]!r} is {top0['token']!r} (id {top0['id']}, "
          f"logprob {top0['logprob']:.4f})")
    assert top0["token"] == " Paris", top0
    for r in records:
        print(f"    {r['prompt']!r}: ids {r['ids']}  top5 "
              f"{[(t['token'], round(t['logprob'], 3)) for t in r['top20'][:5]]}")
    assert out.stat().st_size < 100_000


def main() -> None:
    FIX.mkdir(parents=True, exist_ok=True)
    print("tokenizer")
    tok = build_tokenizer()
    write_tokenizer(tok, TOK_DIR)
    tok = Tokenizer.from_file(str(TOK_DIR / "tokenizer.json"))
    hf_tok = AutoTokenizer.from_pretrained(str(TOK_DIR))
    assert hf_tok.bos_token_id == 0 and hf_tok.eos_token_id == 0
    assert hf_tok(SENTENCES[0])["input_ids"] == tok.encode(SENTENCES[0]).ids
    input_ids = encode_fixed(tok)
    print(f"  vocab {tok.get_vocab_size()}, input_ids {input_ids.tolist()}")
    assert tok.decode(input_ids[0, 1:].tolist()) == tok.decode(tok.encode(SENTENCES[0]).ids[: SEQ - 1])

    print("tiny models")
    for name in ("gpt2", "llama", "qwen2", "neox"):
        build_model(name, tok, TOK_DIR, input_ids)

    print("smollm2 reference")
    smollm2_reference()

    print("written:")
    total = 0
    for p in sorted(FIX.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.relative_to(ROOT)}  {p.stat().st_size} bytes")
    print(f"total fixture size: {total} bytes ({total / 1e6:.2f} MB)")
    assert total < 5_000_000


if __name__ == "__main__":
    main()
