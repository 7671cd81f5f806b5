"""A minimal OpenAI-style completions server on Hugging Face transformers: the
baseline of eval/bench/serve_load.py.

`POST /v1/completions` (`prompt`, `max_tokens`, `temperature`, `stream`,
`stream_options.include_usage`, and saescope's `steer: [{"name": N}]`),
streamed as server-sent events, and `GET /health`. Requests are generated
one at a time with `model.generate` (transformers has no continuous
batching); the others wait for the lock. Steering files written by saescope
(`steering_vector` kind: one vector per site, at `hook_attn_out`,
`hook_mlp_out` or `hook_resid_post`) are applied by forward hooks, as pyvene
and EasySteer do.

    python eval/bench/serve_hf.py --port 8001 [--dtype f32|bf16] [--steer NAME=FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / ".cache" / "models" / "smollm2-135m"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steer", action="append", default=[], help="NAME=FILE (a saescope steering_vector file)")
    return p.parse_args()


def load_steer(path: str, model, dtype):
    """The (module, vector) pairs of a saescope steering-vector file."""
    import torch
    from safetensors.torch import load_file

    spec = json.loads(Path(path).read_text())
    tensors = load_file(str(Path(path).with_suffix(".safetensors")))
    pairs = []
    for i, s in enumerate(spec["interventions"]):
        if s["kind"] != "steering_vector":
            raise SystemExit(f"{path}: only steering_vector files are supported, not {s['kind']}")
        vectors = tensors[f"{i}.vectors"] * float(s.get("scale", 1.0))
        for site, v in zip(s["sites"], vectors):
            layer, hook = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", site).groups()
            block = model.model.layers[int(layer)]
            module = {"hook_attn_out": block.self_attn, "hook_mlp_out": block.mlp, "hook_resid_post": block}[hook]
            pairs.append((module, v.to(dtype)))
    return pairs


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF_FILE, torch_dtype=dtype).eval()
    steers = {}
    for item in args.steer:
        name, path = item.split("=", 1)
        steers[name] = load_steer(path, model, dtype)
    lock = threading.Lock()

    class Ids(BaseStreamer):
        """Hands each new token id to a queue (the prompt's first call skipped)."""

        def __init__(self):
            self.q: queue.Queue = queue.Queue()
            self.prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            self.q.put(int(value.reshape(-1)[0]))

        def end(self):
            self.q.put(None)

    def add_to_output(v):
        def hook(_module, _inputs, output):
            if isinstance(output, tuple):
                return (output[0] + v,) + tuple(output[1:])
            return output + v
        return hook

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def send_json(self, status: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self.send_json(200, {"status": "ok"})
            else:
                self.send_json(404, {"error": {"message": "not found"}})

        def do_POST(self):
            if self.path != "/v1/completions":
                return self.send_json(404, {"error": {"message": "not found"}})
            req = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            names = [s["name"] for s in req.get("steer") or []]
            if any(n not in steers for n in names):
                return self.send_json(400, {"error": {"message": f"unknown steer in {names}", "param": "steer"}})
            ids = tok(req["prompt"], return_tensors="pt").input_ids
            max_tokens = int(req.get("max_tokens", 16))
            temperature = float(req.get("temperature", 1.0))
            streamer = Ids()
            sampling = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature}
            with lock:
                handles = [m.register_forward_hook(add_to_output(v)) for n in names for m, v in steers[n]]
                try:
                    worker = threading.Thread(target=lambda: model.generate(
                        ids, max_new_tokens=max_tokens, streamer=streamer, pad_token_id=tok.eos_token_id,
                        **sampling))
                    worker.start()
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("connection", "close")
                    self.end_headers()
                    created, out, sent = int(time.time()), [], 0
                    finish = "length"

                    def chunk(text, reason, usage=None):
                        obj = {"id": "cmpl-hf", "object": "text_completion", "created": created,
                               "model": "smollm2-135m",
                               "choices": [] if usage else [{"index": 0, "text": text, "logprobs": None,
                                                             "finish_reason": reason}]}
                        if usage:
                            obj["usage"] = usage
                        self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                        self.wfile.flush()

                    while (t := streamer.q.get()) is not None:
                        if t == tok.eos_token_id:
                            finish = "stop"
                            continue
                        out.append(t)
                        text = tok.decode(out)
                        if not text.endswith("\ufffd") and len(text) > sent:
                            chunk(text[sent:], None)
                            sent = len(text)
                    worker.join()
                    chunk("", finish)
                    if (req.get("stream_options") or {}).get("include_usage"):
                        n = len(out) + (finish == "stop")
                        chunk("", None, {"prompt_tokens": ids.shape[1], "completion_tokens": n,
                                         "total_tokens": ids.shape[1] + n})
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                finally:
                    for h in handles:
                        h.remove()
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
