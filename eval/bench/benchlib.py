"""Helpers the benchmark drivers share: reading a child's JSON report, numbers
from it, printing and saving a run's result, emulating a CPU tier on both sides,
and the machine record every result stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def last_json_object(text: str) -> dict | None:
    """The JSON object a child printed: the whole stdout, or else the last line that parses."""
    text = text.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except json.JSONDecodeError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                if isinstance(obj, dict):
                    return obj
            except json.JSONDecodeError:
                continue
    # a pretty-printed object after other output: from the last line that is just "{"
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() == "{":
            try:
                obj = json.loads("\n".join(lines[i:]))
                if isinstance(obj, dict):
                    return obj
            except json.JSONDecodeError:
                continue
    return None


def num(d: dict | None, k: str) -> float | None:
    if not d:
        return None
    v = d.get(k)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def emit_result(result: dict, out: str | None) -> None:
    """Prints `result` as JSON on stdout and writes it to `out` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


# --- CPU tiers and the machine record -------------------------------------------------

# What each emulated tier sets, for libtorch's kernels (ATen), oneDNN, MKL and our own;
# `native` removes all four. Neither side can tell an emulated tier from a real one,
# except through the memory bandwidth and caches, which no variable changes.
TIER_VARIABLES = ("SAESCOPE_CPU", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
CPU_TIERS = {
    "avx2": {"SAESCOPE_CPU": "avx2", "ATEN_CPU_CAPABILITY": "avx2",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"SAESCOPE_CPU": "avx512", "ATEN_CPU_CAPABILITY": "avx512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "native": {},
}


def add_tier_arguments(parser) -> None:
    parser.add_argument("--cpu-tier", choices=sorted(CPU_TIERS), default="native",
                        help="emulate a lower CPU tier on both sides (sets " + ", ".join(TIER_VARIABLES) + ")")


def apply_cpu_tier(tier: str) -> None:
    """Re-executes this script with the tier's variables (and only those) set, unless
    they already are, so that both sides, in this process or in children, start with
    them: MKL, oneDNN and ATen read them once, at start-up."""
    wanted = CPU_TIERS[tier]
    current = {k: os.environ[k] for k in TIER_VARIABLES if k in os.environ}
    if current == wanted:
        return
    env = {k: v for k, v in os.environ.items() if k not in TIER_VARIABLES}
    env.update(wanted)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def machine_record(binary: str | Path, python: str = sys.executable) -> dict:
    """`saescope info --json` and what the Python side's torch reports, under the
    current environment: the facts every benchmark record stores."""
    record: dict = {"tier_variables": {k: os.environ.get(k) for k in TIER_VARIABLES}}
    try:
        out = subprocess.run([str(binary), "info", "--json"], capture_output=True, text=True, timeout=120)
        record["saescope_info"] = last_json_object(out.stdout)
    except (OSError, subprocess.TimeoutExpired) as e:
        record["saescope_info"] = None
        record["saescope_info_error"] = str(e)
    probe = ("import json, torch; print(json.dumps({'torch': torch.__version__, "
             "'cpu_capability': torch.backends.cpu.get_cpu_capability(), "
             "'threads': torch.get_num_threads()}))")
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
        record["peer_torch"] = last_json_object(out.stdout)
    except (OSError, subprocess.TimeoutExpired) as e:
        record["peer_torch"] = {"error": str(e)}
    return record


def resolve_dtype(dtype: str, machine: dict) -> str:
    """`auto` as saescope resolves it on the CPU: bf16 with native bf16 arithmetic, else f32."""
    if dtype != "auto":
        return dtype
    info = machine.get("saescope_info") or {}
    return "bf16" if (info.get("cpu") or {}).get("native_bf16") else "f32"


def tier_suffix(tier: str) -> str:
    """File-name suffix of a tier's results: none for the native tier."""
    return "" if tier == "native" else f"-{tier}"
