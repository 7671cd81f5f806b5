"""Load on `saescope serve` against a transformers server (eval/bench/serve_hf.py)
in the same run, on SmolLM2-135M over loopback: for 1, 4 and 16 concurrent
streams, unsteered and steered (the learned country-capital steering vector,
at every block's attention and MLP outputs), each stream sending a bounded
number of streamed greedy completions. Reports throughput (completion tokens
per second of wall time), p50/p99 time to first token and inter-token latency,
and checks that no request was lost or corrupted: every answer is complete,
and each prompt's text is the same at every load.

    python eval/bench/serve_load.py [--streams 1,4,16] [--requests 3] [--max-tokens 32]

Writes eval/results/serve-load.json (with the machine's facts).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import emit_result, machine_record, resolve_dtype  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "release" / "saescope"
PYTHON = ROOT / ".venv" / "bin" / "python"
STEER = ROOT / "eval" / "results" / "steer" / "country_capital" / "steering_vector.json"
PROMPTS = [
    "The capital of France is", "My favourite season is", "In 1969 the first person",
    "The best way to learn a language", "A recipe for bread needs", "The ocean is deep because",
    "Computers store numbers in", "The old lighthouse keeper", "To plant a tree you should",
    "The history of Rome began", "A good night's sleep", "The train left the station",
    "Mathematics is the study of", "Bees make honey by", "The mountain village was",
    "When it rains, the streets",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{cmd[0]} did not start")


def one_request(port: int, prompt: str, steered: bool, max_tokens: int) -> dict:
    body = {"model": "smollm2-135m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    if steered:
        body["steer"] = [{"name": "capital"}]
    start = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    r = c.getresponse()
    out = {"status": r.status, "text": "", "arrivals": [], "finish": None, "tokens": None, "done": False}
    if r.status != 200:
        out["error"] = r.read().decode(errors="replace")
        return out
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            out["done"] = True
            break
        obj = json.loads(data)
        if obj.get("usage"):
            out["tokens"] = obj["usage"]["completion_tokens"]
        for ch in obj.get("choices", []):
            if ch.get("text"):
                out["text"] += ch["text"]
                out["arrivals"].append(time.perf_counter() - start)
            if ch.get("finish_reason"):
                out["finish"] = ch["finish_reason"]
    c.close()
    return out


def load(port: int, streams: int, requests: int, steered: bool, max_tokens: int) -> dict:
    results: list[tuple[str, dict]] = []
    lock = threading.Lock()

    def client(s: int) -> None:
        for i in range(requests):
            prompt = PROMPTS[(s * requests + i) % len(PROMPTS)]
            r = one_request(port, prompt, steered, max_tokens)
            with lock:
                results.append((prompt, r))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(s,)) for s in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    def complete(r: dict) -> bool:
        return r["status"] == 200 and r["done"] and bool(r["finish"]) and bool(r["tokens"])

    ok = [(p, r) for p, r in results if complete(r)]
    ttft = [r["arrivals"][0] for _, r in ok if r["arrivals"]]
    itl = [b - a for _, r in ok for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    q = lambda xs, p: (statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else (xs[0] if xs else None))  # noqa: E731
    tokens = sum(r["tokens"] for _, r in ok)
    return {
        "streams": streams, "requests": len(results), "complete": len(ok), "wall_s": wall,
        "tokens": tokens, "tokens_per_s": tokens / wall,
        "ttft_p50_ms": 1e3 * q(ttft, 50), "ttft_p99_ms": 1e3 * q(ttft, 99),
        "itl_p50_ms": 1e3 * q(itl, 50) if itl else None, "itl_p99_ms": 1e3 * q(itl, 99) if itl else None,
        "texts": {p: r["text"] for p, r in ok},
        "failures": [r for _, r in results if not complete(r)][:3],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="1,4,16")
    p.add_argument("--requests", type=int, default=3, help="requests per stream")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default=str(ROOT / "eval" / "results" / "serve-load.json"))
    args = p.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "saescope"], cwd=ROOT, check=True)
    machine = machine_record(BINARY, str(PYTHON))
    dtype = resolve_dtype(args.dtype, machine)
    servers = {
        "saescope": lambda port: [str(BINARY), "serve", "--model", "smollm2-135m", "--dtype", dtype,
                                  "--port", str(port), "--max-concurrent", str(max(streams)),
                                  "--steer", f"capital={STEER}", "--threads", "2"],
        "transformers": lambda port: [str(PYTHON), str(ROOT / "eval/bench/serve_hf.py"), "--port", str(port),
                                      "--dtype", dtype, "--steer", f"capital={STEER}", "--threads", "2"],
    }
    runs = []
    for name, cmd in servers.items():
        port = free_port()
        proc = start(cmd(port), port, Path(f"/tmp/serve-load-{name}.log"))
        try:
            for steered in (False, True):
                reference: dict[str, str] = {}
                for n in streams:
                    r = load(port, n, args.requests, steered, args.max_tokens)
                    corrupted = 0
                    for prompt, text in r.pop("texts").items():
                        reference.setdefault(prompt, text)
                        corrupted += reference[prompt] != text
                    r.update(server=name, steered=steered, corrupted=corrupted)
                    runs.append(r)
                    print(f"{name:12} {'steered' if steered else 'plain':8} {n:2} streams: "
                          f"{r['tokens_per_s']:7.1f} tok/s, ttft p50 {r['ttft_p50_ms']:7.1f} p99 "
                          f"{r['ttft_p99_ms']:7.1f} ms, itl p50 {r['itl_p50_ms'] or 0:6.1f} p99 "
                          f"{r['itl_p99_ms'] or 0:6.1f} ms, {r['complete']}/{r['requests']} complete, "
                          f"{corrupted} changed", file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    ratios = {}
    for r in runs:
        if r["server"] == "saescope":
            base = next(b for b in runs if b["server"] == "transformers" and b["streams"] == r["streams"]
                        and b["steered"] == r["steered"])
            key = f"{'steered' if r['steered'] else 'plain'}-{r['streams']}"
            ratios[key] = r["tokens_per_s"] / base["tokens_per_s"]
    lost = sum(r["requests"] - r["complete"] for r in runs)
    changed = sum(r["corrupted"] for r in runs if r["server"] == "saescope")
    emit_result({"benchmark": "serve-load", "dtype": dtype, "max_tokens": args.max_tokens,
                 "requests_per_stream": args.requests, "runs": runs, "throughput_ratio": ratios,
                 "lost": lost, "saescope_changed_texts": changed, "machine": machine}, args.out)
    if lost or changed:
        raise SystemExit(f"{lost} requests lost, {changed} saescope texts changed under load")


if __name__ == "__main__":
    main()
