#!/usr/bin/env python3
"""SAE training benchmark: `saescope bench train` against EleutherAI's sparsify, same rows.

    "$(scripts/setup_sae_reference.sh)" eval/bench/sae_train.py --store DIR
        [--train-tokens 1048576] [--held-out-tokens 65536] [--batch 4096] [--expansion 16]
        [--k 32] [--lr LR] [--lr-warmup-steps 1000] [--threads 2] [--rounds 1]
        [--only sparsify|saescope] [--binary target/release/saescope] [--out FILE]

Runs with the reference venv's python (it imports sparsify; scripts/setup_sae_reference.sh
makes it). Data: an activation store written by `saescope harvest` (manifest.json +
safetensors shards with `acts` [rows, d] f32). Training rows are the store's FIRST
--train-tokens rows and held-out rows its LAST --held-out-tokens rows, in shard order
(they must not overlap). Both sides see the same rows; each shuffles them its own way.

sparsify side (eai-sparsify 1.3.3, SPARSIFY_DISABLE_TRITON=1 so its decoder is
`embedding_bag`): the inner step of `sparsify.Trainer` for loss_fn="fvu" with
optimizer="adam", reproduced on rows instead of a model hook:
  - `torch.manual_seed(0)`, then `SparseCoder(d, SparseCoderConfig(activation="topk",
    expansion_factor=E, k=K))` in f32: encoder = nn.Linear default init, encoder bias 0,
    W_dec = encoder.weight clone scaled to unit-norm rows;
  - before step 0: b_dec = mean of the first batch (sparsify uses the mean, not a
    geometric median);
  - every step: W_dec rows set to unit norm, forward (encoder ReLU then top-k, sparse
    embedding-bag decoder), loss = FVU = sum((x - x_hat)^2) / sum((x - batch mean)^2)
    (+ auxk_alpha * AuxK, alpha = 0 by the Trainer's default, so no AuxK term), backward
    (sparsify's own sparse encoder backward), remove the W_dec gradient parallel to
    each decoder row, torch.optim.Adam step (default betas/eps; bitsandbytes is not
    installed, so the Trainer would also fall back to torch Adam), zero_grad, LR step;
  - LR = --lr or the Trainer's default 2e-4 / sqrt(num_latents / 2^14); schedule =
    transformers' get_linear_schedule_with_warmup(warmup=W, total=steps): the LR of
    optimizer step t (0-based) is lr * t / W for t < W (zero at t = 0), then
    lr * max(0, (steps - t) / (steps - W)). The Trainer's default W is 1000; with fewer
    steps than that the run is all warm-up. The same W is passed to saescope.
  - batches: the training rows shuffled once with torch.Generator(seed 0), cut into
    floor(N / batch) full batches (a remainder is dropped and reported).
Timing: each step from fetching its batch to the end of its LR step; steady-state
tokens/s = batch * (steps - 3) / time of steps 3.. (the first 3 excluded).
Held-out FVU = sum over the whole held-out set of ||x - x_hat||^2 divided by the sum of
||x - mean(held-out)||^2, with the SAE as the last step left it (as sparsify would save it).

saescope side: `saescope bench train --store DIR --train-tokens N --held-out-tokens M
--batch B --architecture topk --expansion E --k K --lr LR --lr-warmup-steps W --threads T
--json`, whose last stdout line is a JSON object with tokens_per_s, held_out_fvu,
flops_per_token, steps, seconds.

Matmul rate: torch f32 [batch, d] @ [d, d*E], best of 5, GFLOP/s, measured before and
after the runs; the higher of the two is used. "Fraction of matmul
peak" = flops_per_token * tokens/s / matmul rate. sparsify's flops_per_token is what its
step does: dense encoder forward 2*d*n (n = d*E latents) plus sparse work over the k
active latents: decoder forward 2kd, decoder backward (W_dec and activations) 4kd, and
sparsify's sparse encoder backward (W_enc rows by index_add, input by embedding_bag) 4kd:
2*d*n + 10*k*d. (Its encoder backward is NOT a dense 2*d*n matmul.) saescope's is the
number it reports.

Sides alternate --rounds times; each keeps its run with the best tokens/s. Results go to
stdout as JSON (and --out), the table and progress to stderr; the 1-minute load average
before and after is recorded (other processes on 2 cores skew both sides).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (add_tier_arguments, apply_cpu_tier, emit_result, last_json_object, machine_record, num,
                      resolve_dtype)

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release" / "saescope"
SAESCOPE_KEYS = ["tokens_per_s", "held_out_fvu", "flops_per_token", "steps", "seconds"]


def log(msg: str) -> None:
    print(f"[sae-train-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="activation store folder (manifest.json + shards)")
    p.add_argument("--train-tokens", type=int, default=1_048_576)
    p.add_argument("--held-out-tokens", type=int, default=65_536)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=None,
                   help="peak LR; default sparsify's Adam default 2e-4 / sqrt(num_latents / 2^14)")
    p.add_argument("--lr-warmup-steps", type=int, default=1000, help="sparsify's TrainConfig default: 1000")
    p.add_argument("--auxk-alpha", type=float, default=0.0, help="sparsify's TrainConfig default: 0 (no AuxK)")
    p.add_argument("--dead-feature-threshold", type=int, default=10_000_000,
                   help="tokens without firing before a latent counts as dead (sparsify default 10M)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N], for both sides")
    p.add_argument("--dtype", choices=["auto", "f32", "bf16"], default="f32",
                   help="bf16: sparsify's forward under bf16 autocast (what its SparseCoder.forward "
                        "decorator does on bf16-capable CUDA devices, here on the CPU) against saescope "
                        "--compute-dtype bf16; weights, Adam and the held-out evaluation stay f32 on both")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="sparsify init seed and shuffle seed")
    p.add_argument("--only", choices=["sparsify", "saescope"], help="run one side only")
    p.add_argument("--binary", default=str(BIN))
    p.add_argument("--saescope-extra", default="", help="extra arguments for `saescope bench train`, one string")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for one saescope run")
    add_tier_arguments(p)
    p.add_argument("--out")
    return p.parse_args()


# --- data ---------------------------------------------------------------------------------


def read_rows(store: Path, train: int, held_out: int):
    """(train rows [train, d], held-out rows [held_out, d]) from the store's completed
    shards: the first `train` rows and the last `held_out` rows in shard order."""
    import torch
    from safetensors import safe_open

    manifest = json.loads((store / "manifest.json").read_text())
    shards = manifest["shards"]
    total = sum(int(s["rows"]) for s in shards)
    if train + held_out > total:
        sys.exit(f"{store} lists {total} rows in {len(shards)} shards; "
                 f"{train} training + {held_out} held-out rows do not fit without overlap")

    def rows_range(lo: int, hi: int) -> torch.Tensor:
        parts, start = [], 0
        for s in shards:
            n = int(s["rows"])
            a, b = max(lo, start), min(hi, start + n)
            if a < b:
                with safe_open(str(store / s["file"]), framework="pt") as f:
                    parts.append(f.get_slice("acts")[a - start : b - start])
            start += n
        return torch.cat(parts).float().contiguous()

    return manifest, total, rows_range(0, train), rows_range(total - held_out, total)


# --- sparsify -----------------------------------------------------------------------------


def sparsify_flops_per_token(d: int, n: int, k: int) -> float:
    return 2.0 * d * n + 10.0 * k * d


def run_sparsify(args: argparse.Namespace, train_x, held_x) -> dict:
    import torch

    os.environ["SPARSIFY_DISABLE_TRITON"] = "1"
    with contextlib.redirect_stdout(sys.stderr):  # sparsify prints its decoder choice
        import sparsify
        from sparsify import SparseCoder, SparseCoderConfig
        from sparsify.utils import decoder_impl
    from importlib.metadata import version
    from transformers import get_linear_schedule_with_warmup

    d = train_x.shape[1]
    steps = train_x.shape[0] // args.batch
    if steps <= 3:
        sys.exit(f"{steps} steps of {args.batch}: need more than 3 to time a steady state")

    torch.set_float32_matmul_precision("high")  # as Trainer.fit does (no effect on CPU)
    torch.manual_seed(args.seed)
    cfg = SparseCoderConfig(activation="topk", expansion_factor=args.expansion, k=args.k)
    dev = torch.device(args.device)
    sae = SparseCoder(d, cfg, device=dev, dtype=torch.float32)
    n = sae.num_latents
    lr = args.lr or 2e-4 / (n / 2**14) ** 0.5
    opt = torch.optim.Adam([dict(params=sae.parameters(), lr=lr)])
    sched = get_linear_schedule_with_warmup(opt, args.lr_warmup_steps, steps)
    tokens_since_fired = torch.zeros(n, dtype=torch.long, device=dev)
    did_fire = torch.zeros(n, dtype=torch.bool, device=dev)
    perm = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(args.seed))

    log(f"sparsify {version('eai-sparsify')} ({sparsify.__file__}), decoder {decoder_impl.__name__}; "
        f"d={d} latents={n} k={args.k} batch={args.batch} steps={steps} lr={lr:.3e} "
        f"warmup={args.lr_warmup_steps} auxk_alpha={args.auxk_alpha} forward dtype={args.dtype}")
    step_s, fvus = [], []
    t_all = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        x = train_x[perm[step * args.batch : (step + 1) * args.batch]].to(dev)
        if step == 0:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = tokens_since_fired > args.dead_feature_threshold if args.auxk_alpha > 0 else None
        total_variance = (x - x.mean(0)).pow(2).sum()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        fvus.append(float(out.fvu.detach()))  # the Trainer also pulls it to the host every step
        loss = out.fvu + args.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sched.step()
        with torch.no_grad():
            tokens_since_fired += x.shape[0]
            tokens_since_fired[did_fire] = 0
            did_fire.zero_()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - t0)
        if step < 3 or (step + 1) % max(1, steps // 8) == 0 or step == steps - 1:
            log(f"sparsify step {step + 1}/{steps}: fvu {fvus[-1]:.4f}, {step_s[-1] * 1e3:.0f} ms, "
                f"lr {opt.param_groups[0]['lr']:.2e}")
    seconds = time.perf_counter() - t_all
    steady = sum(step_s[3:])
    tokens_per_s = args.batch * (steps - 3) / steady

    with torch.no_grad():
        held = held_x.to(dev)
        mean = held.mean(0)
        err = var = 0.0
        fired = torch.zeros(n, dtype=torch.bool, device=dev)
        for i in range(0, held.shape[0], args.batch):
            x = held[i : i + args.batch]
            top_acts, top_indices, _ = sae.encode(x)
            x_hat = sae.decode(top_acts, top_indices)
            err += (x - x_hat).pow(2).sum().item()
            var += (x - mean).pow(2).sum().item()
            fired[top_indices[top_acts > 0].flatten()] = True
    res = {
        "library": f"eai-sparsify {version('eai-sparsify')}",
        "tokens_per_s": tokens_per_s,
        "held_out_fvu": err / var,
        "flops_per_token": sparsify_flops_per_token(d, n, args.k),
        "steps": steps,
        "seconds": seconds,
        "steady_seconds": steady,
        "first_3_steps_seconds": sum(step_s[:3]),
        "median_step_ms": sorted(step_s)[len(step_s) // 2] * 1e3,
        "train_fvu_first": fvus[0],
        "train_fvu_last10_mean": sum(fvus[-10:]) / len(fvus[-10:]),
        "held_out_latents_never_active": int((~fired).sum()),
        "num_latents": n,
        "lr": lr,
        "lr_warmup_steps": args.lr_warmup_steps,
        "lr_last_step": sched.get_last_lr()[0],
        "auxk_alpha": args.auxk_alpha,
        "dead_latents_at_end": int((tokens_since_fired > args.dead_feature_threshold).sum()),
    }
    log(f"sparsify: {tokens_per_s:,.0f} tokens/s steady, held-out FVU {res['held_out_fvu']:.4f}, "
        f"{seconds:.1f} s for {steps} steps")
    return res


# --- saescope -----------------------------------------------------------------------------


def run_saescope(args: argparse.Namespace, lr: float) -> tuple[dict | None, str | None]:
    binary = Path(args.binary)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return None, f"saescope binary not found at {binary} (cargo build --release, or --binary PATH)"
    cmd = [str(binary), "bench", "train", "--store", str(args.store),
           "--train-tokens", str(args.train_tokens), "--held-out-tokens", str(args.held_out_tokens),
           "--batch", str(args.batch), "--architecture", "topk", "--expansion", str(args.expansion),
           "--k", str(args.k), "--lr", repr(lr), "--lr-warmup-steps", str(args.lr_warmup_steps),
           "--threads", str(args.threads), "--compute-dtype", args.dtype, "--device", args.device,
           "--json"] + args.saescope_extra.split()
    log("running " + " ".join(cmd))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"saescope timed out after {args.timeout:.0f} s"
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode != 0:
        return None, f"saescope exited with {proc.returncode}"
    obj = last_json_object(proc.stdout)
    if obj is None:
        return None, "saescope printed no JSON object on stdout"
    missing = [k for k in SAESCOPE_KEYS if k not in obj]
    if missing:
        log(f"saescope JSON lacks {missing}")
    log(f"saescope: {obj.get('tokens_per_s', float('nan')):,.0f} tokens/s, "
        f"held-out FVU {obj.get('held_out_fvu', float('nan')):.4f}")
    return obj, None


# --- machine ------------------------------------------------------------------------------


def matmul_gflops(rows: int, d: int, n: int, dtype: str = "f32", repeats: int = 5, device: str = "cpu") -> float:
    import torch

    kind = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(rows, d).to(device, kind), torch.randn(d, n).to(device, kind)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * rows * d * n / best / 1e9


def print_table(theirs: dict | None, ours: dict | None, gflops: float) -> dict:
    def frac(r: dict | None) -> float | None:
        fpt, tps = num(r, "flops_per_token"), num(r, "tokens_per_s")
        return fpt * tps / (gflops * 1e9) if fpt is not None and tps is not None else None

    derived = {"fraction_of_matmul_peak": {"sparsify": frac(theirs), "saescope": frac(ours)}}
    for k in ("tokens_per_s", "held_out_fvu"):
        a, b = num(ours, k), num(theirs, k)
        derived[f"ratio_saescope_over_sparsify.{k}"] = a / b if a is not None and b else None

    def fmt(v: float | None, kind: str) -> str:
        if v is None:
            return "-"
        return {"int": f"{v:,.0f}", "fvu": f"{v:.4f}", "pct": f"{100 * v:.1f}%", "m": f"{v / 1e6:.2f}",
                "s": f"{v:.1f}", "x": f"{v:.2f}x"}[kind]

    rows = [("", "unit", "sparsify", "saescope", "saescope/sparsify")]
    for label, unit, key, kind in (("tokens/s (steady)", "tok/s", "tokens_per_s", "int"),
                                   ("held-out FVU", "", "held_out_fvu", "fvu"),
                                   ("FLOP per token", "MFLOP", "flops_per_token", "m"),
                                   ("steps", "", "steps", "int"),
                                   ("wall time", "s", "seconds", "s")):
        r = derived.get(f"ratio_saescope_over_sparsify.{key}")
        rows.append((label, unit, fmt(num(theirs, key), kind), fmt(num(ours, key), kind), fmt(r, "x")))
    fp = derived["fraction_of_matmul_peak"]
    rows.append(("fraction of matmul peak", "", fmt(fp["sparsify"], "pct"), fmt(fp["saescope"], "pct"), ""))
    rows.append(("matmul rate (run dtype)", "GFLOP/s", f"{gflops:.1f}", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["", "SAE training: TopK, sparsify vs saescope"]
    for j, r in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    print("\n".join(lines) + "\n", file=sys.stderr)
    return derived


def main() -> None:
    args = parse_args()
    apply_cpu_tier(args.cpu_tier)
    machine = machine_record(args.binary)
    args.dtype = resolve_dtype(args.dtype, machine)
    log(f"CPU tier {args.cpu_tier}, compute dtype {args.dtype}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    store = Path(args.store)

    theirs_runs: list[dict] = []
    ours_runs: list[dict] = []
    err = None
    if args.only != "saescope":
        t0 = time.perf_counter()
        manifest, total, train_x, held_x = read_rows(store, args.train_tokens, args.held_out_tokens)
        log(f"read {train_x.shape[0]} training + {held_x.shape[0]} held-out rows (d={train_x.shape[1]}) "
            f"of {total} in {time.perf_counter() - t0:.1f} s")
        if train_x.shape[0] % args.batch:
            log(f"note: {train_x.shape[0] % args.batch} training rows beyond the last full batch are dropped")
    else:
        manifest = json.loads((store / "manifest.json").read_text())
    d = int(manifest["d"])
    n = d * args.expansion
    lr = args.lr or 2e-4 / (n / 2**14) ** 0.5
    gflops_before = matmul_gflops(args.batch, d, n, args.dtype, device=args.device)
    log(f"{args.dtype} matmul [{args.batch}, {d}] @ [{d}, {n}] before the runs: {gflops_before:.1f} GFLOP/s")
    for _ in range(max(1, args.rounds)):  # alternate: one heavy thing at a time
        if args.only != "saescope":
            theirs_runs.append(run_sparsify(args, train_x, held_x))
        if args.only != "sparsify":
            ours, err = run_saescope(args, lr)
            if err:
                log(err)
            if ours:
                ours_runs.append(ours)
    theirs = max(theirs_runs, key=lambda r: r["tokens_per_s"]) if theirs_runs else None
    ours = max(ours_runs, key=lambda r: num(r, "tokens_per_s") or 0.0) if ours_runs else None

    gflops_after = matmul_gflops(args.batch, d, n, args.dtype, device=args.device)
    gflops = max(gflops_before, gflops_after)
    log(f"{args.dtype} matmul after the runs: {gflops_after:.1f} GFLOP/s; using the best, {gflops:.1f}")
    derived = print_table(theirs, ours, gflops)
    result = {
        "store": str(store),
        "model": manifest.get("model", {}).get("spec"),
        "hook": manifest.get("hook"),
        "d": d,
        "num_latents": n,
        "k": args.k,
        "batch": args.batch,
        "train_tokens": args.train_tokens,
        "held_out_tokens": args.held_out_tokens,
        "lr": lr,
        "lr_warmup_steps": args.lr_warmup_steps,
        "lr_schedule": "linear warm-up from 0 over W steps, then linear decay to 0 at the last step "
                       "(transformers get_linear_schedule_with_warmup)",
        "threads": args.threads,
        "rounds": args.rounds,
        "dtype": args.dtype,
        f"matmul_gflops_{args.dtype}": gflops,
        f"matmul_gflops_{args.dtype}_before_after": [gflops_before, gflops_after],
        "sparsify": theirs,
        "saescope": ours,
        "saescope_error": err if args.only != "sparsify" else None,
        **derived,
        "torch": torch.__version__,
        "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
        "cpu_count": os.cpu_count(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_tier": args.cpu_tier,
        "machine": machine,
    }
    emit_result(result, args.out)
    if theirs is None and ours is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
