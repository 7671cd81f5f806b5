#!/usr/bin/env python3
"""Runtime benchmark driver: saescope against the Hugging Face baseline, side by side.

    .venv/bin/python eval/bench/runtime.py --dtype f32 [--threads 2] [--quick]
        [--binary target/release/saescope] [--hf-json FILE] [--skip-hf] [--no-append]

1. runs eval/bench/runtime_hf.py for the dtype (or reads an earlier result, --hf-json);
2. runs `saescope bench runtime --model smollm2-135m --dtype DTYPE --json`, which prints
   one JSON object with at least forward_full_tps, forward_l8_tps, generate_b1_tps,
   generate_b8_tps, gemv_gbps, matmul_gflops, weight_bytes, flops_per_token_full,
   flops_per_token_l8;
3. prints a table: each figure for saescope and HF with the ratio saescope/HF, the
   forwards' share of the matmul-bound limit
       share = flops_per_token x tokens/s / (matmul_gflops x 1e9)
   (each framework against its own matmul rate measured in the run's dtype: HF's
   torch.mm, saescope's the faster of libtorch's matmul and the oneDNN product its f32
   layers use, where torch.mm takes MKL's sgemm; the FLOP count is saescope's, the
   model is the same), and for generate_b1 the bandwidth limit
       limit = gemv_gbps x 1e9 / weight_bytes   tokens/s
   with each framework's share of it (best rate over best limit), and saescope's paired
   share: `saescope bench` alternates the probe with batch-1 generation and reports the
   median over rounds of each round's rate against the mean of the probes just before
   and after it (generate_b1_share_paired), which a drifting machine disturbs least, and
   the same for the decode steps alone, after the first new token
   (generate_b1_decode_share_paired): the prompt's forward is not weight streaming;
4. appends the record to eval/results/runtime-<dtype>.json (a JSON list).

Steps 1 and 2 alternate --rounds times (default 2) and each side keeps its best
figure per metric, so that neither side alone meets a slow spell of the machine.

A missing or failing binary is reported and the HF side is still printed and recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (add_tier_arguments, apply_cpu_tier, last_json_object, machine_record, num,
                      resolve_dtype, tier_suffix)

ROOT = Path(__file__).resolve().parents[2]
HF_SCRIPT = ROOT / "eval" / "bench" / "runtime_hf.py"
RESULTS = ROOT / "eval" / "results"

SAESCOPE_KEYS = [
    "forward_full_tps", "forward_l8_tps", "generate_b1_tps", "generate_b8_tps",
    "gemv_gbps", "matmul_gflops", "weight_bytes", "flops_per_token_full", "flops_per_token_l8",
    "generate_b1_share_paired", "generate_b1_decode_tps", "generate_b1_decode_share_paired",
]
COMPARED = [
    ("forward_full_tps", "tok/s"),
    ("forward_l8_tps", "tok/s"),
    ("generate_b1_tps", "tok/s"),
    ("generate_b8_tps", "tok/s"),
    ("matmul_gflops", "GFLOP/s"),  # in the run's dtype
    ("matmul_gflops_bf16", "GFLOP/s"),
]


def log(msg: str) -> None:
    print(f"[runtime] {msg}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=["auto", "f32", "bf16"], default="auto",
                   help="both sides' model dtype; auto = what saescope picks on this CPU tier")
    add_tier_arguments(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N], for both sides")
    p.add_argument("--results-dir", default=str(RESULTS), help="where the record is appended")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--binary", default=str(ROOT / "target" / "release" / "saescope"))
    p.add_argument("--extra", default="", help="extra arguments for `saescope bench runtime`, one string")
    p.add_argument("--quick", action="store_true", help="pass --quick to runtime_hf.py (smoke test; add --extra '--quick' if saescope has one)")
    p.add_argument("--hf-json", help="use this runtime_hf.py result instead of running it")
    p.add_argument("--skip-hf", action="store_true", help="do not run the HF baseline")
    p.add_argument("--python", default=sys.executable, help="python that runs runtime_hf.py")
    p.add_argument("--no-append", action="store_true", help="do not append to eval/results")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternate HF and saescope this many times and keep each side's best figure "
                        "(the machine's speed drifts between minutes; alternation exposes both to it)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    return p.parse_args()


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("MKL_NUM_THREADS", str(threads))
    return env


def run_hf(args: argparse.Namespace) -> dict | None:
    if args.hf_json:
        return json.loads(Path(args.hf_json).read_text())
    if args.skip_hf:
        return None
    cmd = [args.python, str(HF_SCRIPT), "--dtype", args.dtype, "--threads", str(args.threads),
           "--device", args.device.split(":")[0] if args.device != "cpu" else "cpu"]
    if args.quick:
        cmd.append("--quick")
    log("running " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True,
                              env=child_env(args.threads), timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        log(f"runtime_hf.py timed out after {args.timeout:.0f}s")
        return None
    if proc.returncode != 0:
        log(f"runtime_hf.py failed (exit {proc.returncode})")
        return None
    obj = last_json_object(proc.stdout)
    if obj is None:
        log("runtime_hf.py printed no JSON object")
    return obj


def run_saescope(args: argparse.Namespace) -> tuple[dict | None, str | None]:
    binary = Path(args.binary)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        msg = (f"saescope binary not found at {binary} (build it with `cargo build --release`, "
               f"or pass --binary PATH); showing the Hugging Face side only")
        log(msg)
        return None, msg
    cmd = [str(binary), "bench", "runtime", "--model", args.model, "--dtype", args.dtype,
           "--device", args.device, "--json"]
    cmd += args.extra.split()
    log("running " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=child_env(args.threads), timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        msg = f"saescope timed out after {args.timeout:.0f}s"
        log(msg)
        return None, msg
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode != 0:
        msg = f"saescope exited with {proc.returncode}"
        log(msg)
        return None, msg
    obj = last_json_object(proc.stdout)
    if obj is None:
        msg = "saescope printed no JSON object on stdout"
        log(msg)
        return None, msg
    missing = [k for k in SAESCOPE_KEYS if k not in obj]
    if missing:
        log(f"saescope JSON lacks {missing}")
    return obj, None


def best_of(runs: list[dict | None]) -> dict | None:
    """One result from several: the highest value of every rate (keys ending in
    _tps, _gflops, _gflops_bf16 or _gbps) and paired share (_paired), the first run's
    value of everything else."""
    runs = [r for r in runs if r]
    if not runs:
        return None
    best = dict(runs[0])
    for k, v in best.items():
        if k.endswith(("_tps", "_gflops", "_gflops_bf16", "_gbps", "_paired")) and isinstance(v, (int, float)):
            best[k] = max(float(r[k]) for r in runs if isinstance(r.get(k), (int, float)))
    best["rounds"] = len(runs)
    return best


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0.0) else None


def hf_in_dtype(hf: dict | None, dtype: str) -> dict | None:
    """HF figures as compared: in a bf16 run, `matmul_gflops` is HF's bf16 matmul rate
    (saescope's `matmul_gflops` is measured in the run's dtype); the f32 rate stays
    available as `matmul_gflops_f32`."""
    if hf is None or dtype != "bf16" or "matmul_gflops_bf16" not in hf:
        return hf
    view = dict(hf)
    view["matmul_gflops_f32"] = hf.get("matmul_gflops")
    view["matmul_gflops"] = hf["matmul_gflops_bf16"]
    return view


def derive(ours: dict | None, hf: dict | None) -> dict:
    """Ratios and the shares of the matmul-bound and bandwidth-bound limits
    (`hf` already passed through hf_in_dtype)."""
    d: dict = {"ratio": {}, "matmul_share": {}, "bandwidth": {}}
    for k, _ in COMPARED:
        d["ratio"][k] = ratio(num(ours, k), num(hf, k))
    for fwd, fpt_key in (("forward_full_tps", "flops_per_token_full"), ("forward_l8_tps", "flops_per_token_l8")):
        fpt = num(ours, fpt_key)
        for who, res in (("saescope", ours), ("hf", hf)):
            tps, mm = num(res, fwd), num(res, "matmul_gflops")
            share = fpt * tps / (mm * 1e9) if None not in (fpt, tps, mm) and mm else None
            d["matmul_share"][f"{fwd}.{who}"] = share
    gbps, wbytes = num(ours, "gemv_gbps"), num(ours, "weight_bytes")
    limit = gbps * 1e9 / wbytes if gbps is not None and wbytes else None
    d["bandwidth"]["generate_b1_limit_tps"] = limit
    d["bandwidth"]["generate_b1_share.saescope"] = ratio(num(ours, "generate_b1_tps"), limit)
    d["bandwidth"]["generate_b1_share.hf"] = ratio(num(hf, "generate_b1_tps"), limit)
    d["bandwidth"]["generate_b1_share_paired.saescope"] = num(ours, "generate_b1_share_paired")
    d["bandwidth"]["generate_b1_decode_share_paired.saescope"] = num(ours, "generate_b1_decode_share_paired")
    return d


def fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def print_table(dtype: str, ours: dict | None, hf: dict | None, d: dict) -> None:
    rows = [("metric", "unit", "saescope", "HF", "saescope/HF")]
    for k, unit in COMPARED:
        r = d["ratio"].get(k)
        rows.append((k, unit, fmt(num(ours, k)), fmt(num(hf, k)), f"{r:.2f}x" if r else "-"))
    for k, unit in (("gemv_gbps", "GB/s"), ("weight_bytes", "MB"), ("flops_per_token_full", "MFLOP"),
                    ("flops_per_token_l8", "MFLOP")):
        v = num(ours, k)
        if v is not None and unit in ("MB", "MFLOP"):
            v = v / 1e6
        rows.append((k, unit, fmt(v), "", ""))
    for fwd in ("forward_full_tps", "forward_l8_tps"):
        rows.append((f"{fwd} / matmul limit", "share", fmt(d["matmul_share"][f"{fwd}.saescope"], True),
                     fmt(d["matmul_share"][f"{fwd}.hf"], True), ""))
    bw = d["bandwidth"]
    rows.append(("generate_b1 bandwidth limit", "tok/s", fmt(bw["generate_b1_limit_tps"]), "", ""))
    rows.append(("generate_b1 / bandwidth limit", "share", fmt(bw["generate_b1_share.saescope"], True),
                 fmt(bw["generate_b1_share.hf"], True), ""))
    rows.append(("generate_b1 / limit, paired rounds", "share",
                 fmt(bw["generate_b1_share_paired.saescope"], True), "", ""))
    rows.append(("generate_b1 decode steps / limit, paired", "share",
                 fmt(bw["generate_b1_decode_share_paired.saescope"], True), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    print(f"\nruntime benchmark, SmolLM2-135M, {dtype}")
    for j, r in enumerate(rows):
        print("  " + "  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print()


def append_result(dtype: str, record: dict, results: Path = RESULTS) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"runtime-{dtype}.json"
    history: list = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            history = old if isinstance(old, list) else [old]
        except json.JSONDecodeError:
            backup = path.with_suffix(".json.bad")
            path.rename(backup)
            log(f"{path} was not valid JSON; moved it to {backup}")
    history.append(record)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(history, indent=2) + "\n")
    tmp.replace(path)
    return path


def main() -> None:
    args = parse_args()
    apply_cpu_tier(args.cpu_tier)
    machine = machine_record(args.binary, args.python)
    args.dtype = resolve_dtype(args.dtype, machine)
    log(f"CPU tier {args.cpu_tier}, dtype {args.dtype}")
    hf_runs, our_runs, err = [], [], None
    for _ in range(max(1, args.rounds)):  # one heavy thing at a time, alternating
        hf_runs.append(run_hf(args))
        ours_once, err = run_saescope(args)
        our_runs.append(ours_once)
    hf, ours = best_of(hf_runs), best_of(our_runs)
    hf_view = hf_in_dtype(hf, args.dtype)
    d = derive(ours, hf_view)
    print_table(args.dtype, ours, hf_view, d)
    if err:
        print(f"note: {err}\n")
    record = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dtype": args.dtype,
        "cpu_tier": args.cpu_tier,
        "machine": machine,
        "threads": args.threads,
        "device": args.device,
        "model": args.model,
        "quick": args.quick,
        "saescope": ours,
        "saescope_error": err,
        "hf": hf,
        "derived": d,
    }
    if not args.no_append:
        path = append_result(args.dtype + tier_suffix(args.cpu_tier), record, Path(args.results_dir))
        print(f"appended to {path}")
    if ours is None and hf is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
