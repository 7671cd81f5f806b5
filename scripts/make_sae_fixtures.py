#!/usr/bin/env python3
"""Build the SAE fixtures under tests/fixtures/sae/ with the reference libraries themselves.

Run from the repository root, with the reference venv (scripts/setup_sae_reference.sh):

    "$(scripts/setup_sae_reference.sh)" scripts/make_sae_fixtures.py [--out tests/fixtures/sae]

Deterministic: every tensor comes from a torch.Generator with a fixed seed, so running it
again with the same library versions rewrites the same bytes.

What it writes (d_in = 16, d_sae = 64, f32; layouts, formulas and keys are documented in
tests/fixtures/sae/README.md):

    saelens_standard/              SAELens StandardSAE  (ReLU)
    saelens_standard_layer_norm/   SAELens StandardSAE with normalize_activations="layer_norm"
    saelens_topk/                  SAELens TopKSAE, k = 4, rescale_acts_by_decoder_norm = false
    saelens_topk_rescaled/         SAELens TopKSAE, k = 4, rescale_acts_by_decoder_norm = true
                                   (what SAELens's own TopK trainer saves)
    saelens_jumprelu/              SAELens JumpReLUSAE, apply_b_dec_to_input = false
                                   (as Gemma Scope's JumpReLU SAEs are)
    saelens_gated/                 SAELens GatedSAE
    sparsify_topk/                 sparsify SparseCoder, TopK, num_latents 64, k = 4

Each SAELens folder is written by the SAE's own `save_model` (cfg.json +
sae_weights.safetensors), reloaded with `SAE.load_from_disk`, and the reloaded SAE's
`encode`/`decode` on a seeded input give reference.safetensors:
    input [32, 16], feature_acts [32, 64], reconstruction [32, 16]   (all f32)
The sparsify folder is written by `SparseCoder.save_to_disk` (cfg.json + sae.safetensors),
reloaded with `SparseCoder.load_from_disk`, and its reference.safetensors holds
    input [32, 16] f32, top_acts [32, 4] f32, top_indices [32, 4] int64,
    feature_acts [32, 64] f32 (top_acts scattered to their indices), reconstruction [32, 16] f32.

Inputs are redrawn (next seed) until no decision sits near a boundary: every JumpReLU
pre-activation is at least MARGIN from its threshold, every gate pre-activation at least
MARGIN from 0, and for TopK the k-th and (k+1)-th largest scores are at least MARGIN
apart, so an implementation with a different summation order makes the same choices.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

# sparsify picks its decoder at import time; the Triton kernel needs a GPU.
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
D_IN = 16
D_SAE = 64
K = 4
ROWS = 32
MARGIN = 1e-3
MODEL_NAME = "tiny"
HOOK_NAME = "blocks.0.hook_resid_post"


def log(msg: str) -> None:
    print(f"[sae-fixtures] {msg}", file=sys.stderr, flush=True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g: torch.Generator, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * std + mean


def uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g) * (hi - lo) + lo


def random_decoder(g: torch.Generator) -> torch.Tensor:
    """[d_sae, d_in] rows with norms spread over [0.5, 2] (never unit norm, so any
    hidden normalisation in a reader shows up)."""
    w = randn(g, D_SAE, D_IN)
    return w / w.norm(dim=1, keepdim=True) * uniform(g, 0.5, 2.0, D_SAE, 1)


def set_params(sae: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Overwrite every parameter; refuse to leave one at its initial value."""
    params = dict(sae.named_parameters())
    missing = set(params) - set(values)
    extra = set(values) - set(params)
    if missing or extra:
        raise SystemExit(f"{type(sae).__name__}: parameters {sorted(params)}; missing {missing}, extra {extra}")
    with torch.no_grad():
        for name, value in values.items():
            if params[name].shape != value.shape:
                raise SystemExit(f"{name}: expected {tuple(params[name].shape)}, got {tuple(value.shape)}")
            params[name].copy_(value)


def describe_folder(folder: Path) -> dict:
    """cfg.json and tensor names/shapes/dtypes of every safetensors file in a folder."""
    out: dict = {"cfg": json.loads((folder / "cfg.json").read_text()), "files": {}}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            out["files"][f.name] = {
                k: {"shape": list(st.get_slice(k).get_shape()), "dtype": st.get_slice(k).get_dtype()}
                for k in sorted(st.keys())
            }
    return out


# --- SAELens ------------------------------------------------------------------------------


def saelens_cases() -> list[dict]:
    """One dict per SAELens fixture: folder name, config, parameters, input scale."""
    from sae_lens import (
        GatedSAE, GatedSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig,
        TopKSAE, TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    def meta() -> SAEMetadata:
        return SAEMetadata(model_name=MODEL_NAME, hook_name=HOOK_NAME)

    cases = []

    # standard: relu((x - b_dec) @ W_enc + b_enc) @ W_dec + b_dec
    g = gen(1001)
    cases.append(dict(
        name="saelens_standard", cls=StandardSAE,
        cfg=StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta()),
        params={
            "W_enc": randn(g, D_IN, D_SAE, std=0.25),
            "b_enc": randn(g, D_SAE, std=0.3),
            "W_dec": random_decoder(g),
            "b_dec": randn(g, D_IN, std=0.5),
        },
        input_seed=2001, input_std=1.5,
    ))

    # standard with per-row layer norm of the input (undone on the output)
    g = gen(1002)
    cases.append(dict(
        name="saelens_standard_layer_norm", cls=StandardSAE,
        cfg=StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations="layer_norm", metadata=meta()),
        params={
            "W_enc": randn(g, D_IN, D_SAE, std=0.25),
            "b_enc": randn(g, D_SAE, std=0.3),
            "W_dec": random_decoder(g),
            "b_dec": randn(g, D_IN, std=0.3),
        },
        # offset and scale far from a normalised row so the layer norm matters
        input_seed=2002, input_std=3.0, input_mean=2.0,
    ))

    # topk: mostly negative encoder biases, so the special row 0 (x = b_dec, hence
    # pre-activation = b_enc) has only 2 positive scores among its top 4 and the ReLU
    # after the top-k shows.
    for name, rescale, seed in (("saelens_topk", False, 1003), ("saelens_topk_rescaled", True, 1004)):
        g = gen(seed)
        W_enc = randn(g, D_IN, D_SAE, std=0.25)
        W_dec = random_decoder(g)
        b_dec = randn(g, D_IN, std=0.5)
        # Row 0's scores are b_enc (times the decoder norms when rescaling): redraw b_enc
        # until its 4th and 5th largest scores are well apart.
        while True:
            b_enc = -uniform(g, 0.05, 0.6, D_SAE)
            b_enc[[7, 41]] = torch.tensor([0.4, 0.25])
            scores = b_enc * W_dec.norm(dim=-1) if rescale else b_enc
            top = scores.topk(K + 1).values
            if top[K - 1] - top[K] >= 10 * MARGIN:
                break
        cases.append(dict(
            name=name, cls=TopKSAE,
            cfg=TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=rescale, metadata=meta()),
            params={"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec},
            input_seed=seed + 1000, input_std=1.5, row0_is_b_dec=True,
        ))

    # jumprelu: threshold in (0.15, 0.75) against pre-activations of std ~1 leaves about
    # a third of the latents on and switches off a good share of the positive ones.
    g = gen(1005)
    cases.append(dict(
        name="saelens_jumprelu", cls=JumpReLUSAE,
        cfg=JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False, metadata=meta()),
        params={
            "W_enc": randn(g, D_IN, D_SAE, std=0.25),
            "b_enc": randn(g, D_SAE, std=0.2),
            "W_dec": random_decoder(g),
            "b_dec": randn(g, D_IN, std=0.5),
            "threshold": uniform(g, 0.15, 0.75, D_SAE),
        },
        input_seed=2005, input_std=1.0,
    ))

    # gated: gate and magnitude paths share W_enc; b_gate and b_mag differ so gate-open
    # latents with a negative magnitude pre-activation occur.
    g = gen(1006)
    cases.append(dict(
        name="saelens_gated", cls=GatedSAE,
        cfg=GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta()),
        params={
            "W_enc": randn(g, D_IN, D_SAE, std=0.25),
            "W_dec": random_decoder(g),
            "b_dec": randn(g, D_IN, std=0.5),
            "b_gate": randn(g, D_SAE, std=0.3),
            "b_mag": randn(g, D_SAE, std=0.3),
            "r_mag": randn(g, D_SAE, std=0.4),
        },
        input_seed=2006, input_std=1.5,
    ))
    return cases


def make_input(case: dict, attempt: int, b_dec: torch.Tensor) -> torch.Tensor:
    g = gen(case["input_seed"] + 7919 * attempt)
    x = randn(g, ROWS, D_IN, std=case["input_std"], mean=case.get("input_mean", 0.0))
    if case.get("row0_is_b_dec"):
        x[0] = b_dec
    return x


def saelens_margin(sae, x: torch.Tensor) -> float:
    """Distance of the nearest decision to its boundary for this input (inf: none)."""
    arch = sae.cfg.architecture()
    with torch.no_grad():
        sae_in = sae.process_sae_in(x)
        if arch == "jumprelu":
            pre = sae_in @ sae.W_enc + sae.b_enc
            return (pre - sae.threshold).abs().min().item()
        if arch == "gated":
            gate = sae_in @ sae.W_enc + sae.b_gate
            return gate.abs().min().item()
        if arch == "topk":
            pre = sae_in @ sae.W_enc + sae.b_enc
            if sae.cfg.rescale_acts_by_decoder_norm:
                pre = pre * sae.W_dec.norm(dim=-1)
            top = pre.topk(K + 1, dim=-1).values
            return (top[:, K - 1] - top[:, K]).min().item()
    return float("inf")


def build_saelens(out_dir: Path) -> list[dict]:
    from sae_lens import SAE

    records = []
    for case in saelens_cases():
        folder = out_dir / case["name"]
        if folder.exists():
            shutil.rmtree(folder)
        sae = case["cls"](case["cfg"])
        set_params(sae, case["params"])
        sae.save_model(folder)

        loaded = SAE.load_from_disk(folder)  # generic loader: dispatches on cfg "architecture"
        if type(loaded) is not case["cls"]:
            raise SystemExit(f"{folder}: reloaded as {type(loaded).__name__}")
        for name, p in case["params"].items():
            if not torch.equal(getattr(loaded, name).detach(), p):
                raise SystemExit(f"{folder}: {name} did not round-trip")

        for attempt in range(100):
            x = make_input(case, attempt, case["params"]["b_dec"])
            margin = saelens_margin(loaded, x)
            if margin >= MARGIN:
                break
        else:
            raise SystemExit(f"{folder}: no input with margin {MARGIN} in 100 draws")

        with torch.no_grad():
            feature_acts = loaded.encode(x)
            reconstruction = loaded.decode(feature_acts)
            forward = loaded(x)
        if not torch.allclose(forward, reconstruction, atol=0, rtol=0):
            raise SystemExit(f"{folder}: forward != decode(encode(x))")
        save_file(
            {
                "input": x.contiguous(),
                "feature_acts": feature_acts.float().contiguous(),
                "reconstruction": reconstruction.float().contiguous(),
            },
            str(folder / "reference.safetensors"),
        )
        active = (feature_acts > 0).float()
        fvu = ((reconstruction - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        rec = {
            "folder": case["name"],
            "class": type(loaded).__name__,
            "input_attempt": attempt,
            "decision_margin": margin,
            "active_fraction": active.mean().item(),
            "active_per_row_min_max": [int(active.sum(1).min()), int(active.sum(1).max())],
            "fvu_of_random_sae": fvu.item(),
        }
        if case["name"].startswith("saelens_topk"):
            rec["row0_active"] = int(active[0].sum())
        if case["name"] == "saelens_jumprelu":
            with torch.no_grad():
                pre = loaded.process_sae_in(x) @ loaded.W_enc + loaded.b_enc
            rec["positive_preacts_switched_off"] = ((pre > 0) & (pre <= loaded.threshold)).float().mean().item()
        if case["name"] == "saelens_gated":
            with torch.no_grad():
                s = loaded.process_sae_in(x)
                gate = s @ loaded.W_enc + loaded.b_gate
                mag = s @ (loaded.W_enc * loaded.r_mag.exp()) + loaded.b_mag
            rec["gate_open_but_magnitude_negative"] = ((gate > 0) & (mag <= 0)).float().mean().item()
        if case["name"] == "saelens_topk_rescaled":
            with torch.no_grad():
                pre = loaded.process_sae_in(x) @ loaded.W_enc + loaded.b_enc
                plain = pre.topk(K, dim=-1).indices.sort(-1).values
                scaled = (pre * loaded.W_dec.norm(dim=-1)).topk(K, dim=-1).indices.sort(-1).values
            rec["rows_where_rescaling_changes_the_selection"] = int((plain != scaled).any(-1).sum())
        log(json.dumps(rec))
        records.append(rec)
    return records


# --- sparsify -----------------------------------------------------------------------------


def build_sparsify(out_dir: Path) -> dict:
    with contextlib.redirect_stdout(sys.stderr):  # it prints its decoder choice on import
        from sparsify import SparseCoder, SparseCoderConfig

    folder = out_dir / "sparsify_topk"
    if folder.exists():
        shutil.rmtree(folder)
    cfg = SparseCoderConfig(activation="topk", num_latents=D_SAE, k=K)
    torch.manual_seed(0)  # its nn.Linear init; every value is overwritten below anyway
    sae = SparseCoder(D_IN, cfg, device="cpu", dtype=torch.float32)
    g = gen(3001)
    params = {
        "encoder.weight": randn(g, D_SAE, D_IN, std=0.25),  # [num_latents, d_in] (nn.Linear)
        "encoder.bias": randn(g, D_SAE, std=0.3),
        "W_dec": random_decoder(g),  # [num_latents, d_in]
        "b_dec": randn(g, D_IN, std=0.5),
    }
    set_params(sae, params)
    sae.save_to_disk(folder)

    loaded = SparseCoder.load_from_disk(folder)
    for name, p in loaded.named_parameters():
        if not torch.equal(p.detach(), params[name]):
            raise SystemExit(f"{folder}: {name} did not round-trip")

    for attempt in range(100):
        x = randn(gen(4001 + 7919 * attempt), ROWS, D_IN, std=1.5)
        with torch.no_grad():
            pre = torch.relu((x - loaded.b_dec) @ loaded.encoder.weight.T + loaded.encoder.bias)
            top = pre.topk(K + 1, dim=-1).values
        # distinct k-th/(k+1)-th scores, and at least k strictly positive scores per row
        # (below that sparsify's indices for the zero scores are arbitrary)
        margin = (top[:, K - 1] - top[:, K]).min().item()
        if margin >= MARGIN and bool((top[:, K - 1] > MARGIN).all()):
            break
    else:
        raise SystemExit(f"{folder}: no input with margin {MARGIN} in 100 draws")

    with torch.no_grad():
        top_acts, top_indices, _pre_acts = loaded.encode(x)
        reconstruction = loaded.decode(top_acts, top_indices)
        fwd = loaded(x)
    if not torch.allclose(fwd.sae_out, reconstruction):
        raise SystemExit(f"{folder}: forward != decode(encode(x))")
    dense = torch.zeros(ROWS, D_SAE).scatter_(-1, top_indices, top_acts)
    save_file(
        {
            "input": x.contiguous(),
            "top_acts": top_acts.float().contiguous(),
            "top_indices": top_indices.to(torch.int64).contiguous(),
            "feature_acts": dense.contiguous(),
            "reconstruction": reconstruction.float().contiguous(),
        },
        str(folder / "reference.safetensors"),
    )
    rec = {"folder": "sparsify_topk", "input_attempt": attempt, "decision_margin": margin,
           "fvu_of_random_sae": fwd.fvu.item()}
    log(json.dumps(rec))
    return rec


# --- the formulas of README.md, from the files alone -------------------------------------


def check_documented_formulas(out_dir: Path) -> None:
    """Recompute every reference from cfg.json + weights with the formulas written in
    tests/fixtures/sae/README.md (no SAELens or sparsify code), so the README is checked."""
    from safetensors.torch import load_file

    for folder in sorted(d for d in out_dir.iterdir() if d.is_dir()):
        cfg = json.loads((folder / "cfg.json").read_text())
        ref = load_file(str(folder / "reference.safetensors"))
        x = ref["input"]
        if folder.name.startswith("sparsify"):
            w = load_file(str(folder / "sae.safetensors"))
            pre = torch.relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
            vals, idx = pre.topk(cfg["k"], dim=-1)
            acts = torch.zeros_like(pre).scatter_(-1, idx, vals)
            recon = acts @ w["W_dec"] + w["b_dec"]
        else:
            w = load_file(str(folder / "sae_weights.safetensors"))
            arch = cfg["architecture"]
            h = x
            if cfg["normalize_activations"] == "layer_norm":
                mu = h.mean(-1, keepdim=True)
                h = h - mu
                std = h.std(-1, keepdim=True)  # unbiased (n - 1)
                h = h / (std + 1e-5)
            elif cfg["normalize_activations"] != "none":
                raise SystemExit(f"{folder}: no check for {cfg['normalize_activations']}")
            sae_in = h - w["b_dec"] if cfg["apply_b_dec_to_input"] else h
            dec_norm = w["W_dec"].norm(dim=-1)
            if arch == "standard":
                acts = torch.relu(sae_in @ w["W_enc"] + w["b_enc"])
            elif arch == "jumprelu":
                pre = sae_in @ w["W_enc"] + w["b_enc"]
                acts = torch.relu(pre) * (pre > w["threshold"])
            elif arch == "gated":
                gate = (sae_in @ w["W_enc"] + w["b_gate"]) > 0
                mag = torch.relu(sae_in @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])
                acts = gate * mag
            elif arch == "topk":
                pre = sae_in @ w["W_enc"] + w["b_enc"]
                if cfg["rescale_acts_by_decoder_norm"]:
                    pre = pre * dec_norm
                vals, idx = pre.topk(cfg["k"], dim=-1)
                acts = torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))
            else:
                raise SystemExit(f"{folder}: unknown architecture {arch}")
            dec_in = acts / dec_norm if (arch == "topk" and cfg["rescale_acts_by_decoder_norm"]) else acts
            recon = dec_in @ w["W_dec"] + w["b_dec"]
            if cfg["normalize_activations"] == "layer_norm":
                recon = recon * std + mu
        da = (acts - ref["feature_acts"]).abs().max().item()
        dr = (recon - ref["reconstruction"]).abs().max().item()
        if da > 1e-5 or dr > 1e-5:
            raise SystemExit(f"{folder}: README formula disagrees (acts {da:.2e}, recon {dr:.2e})")
        log(f"{folder.name}: README formulas reproduce the reference (max diff acts {da:.1e}, recon {dr:.1e})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "sae"))
    p.add_argument("--describe", action="store_true", help="print each folder's cfg.json and tensor shapes as JSON")
    args = p.parse_args()
    torch.set_num_threads(1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = {pkg: version(pkg) for pkg in ("sae-lens", "eai-sparsify", "torch", "safetensors")}
    log(f"versions: {versions}")
    build_saelens(out_dir)
    build_sparsify(out_dir)
    check_documented_formulas(out_dir)
    total = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    log(f"wrote {out_dir} ({total / 1024:.1f} KiB)")
    if args.describe:
        print(json.dumps({
            "versions": versions,
            "folders": {d.name: describe_folder(d) for d in sorted(out_dir.iterdir()) if d.is_dir()},
        }, indent=1))


if __name__ == "__main__":
    main()
