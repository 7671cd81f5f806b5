#!/usr/bin/env python3
"""Hugging Face transformers baseline for the runtime benchmark (SmolLM2-135M).

    .venv/bin/python eval/bench/runtime_hf.py --dtype f32 [--threads 2] [--quick] [--out FILE]

Loads SmolLM2-135M-Instruct from the GGUF file (transformers dequantises it), casts it
to the requested dtype and measures, with torch.inference_mode:

  forward_full_tps   tokens/s of model(ids, use_cache=False), batch 8 x 256 random ids
                     (fixed seed), all 30 layers and the LM head
  forward_l8_tps     the same through blocks 0..=8 only (9 layers): model.model.layers is
                     truncated to its first 9 and model.model(...) is called (no LM head)
  generate_b1_tps    greedy generate, batch 1, 16-token prompt, 64 new tokens
                     (min_new_tokens = max_new_tokens): new tokens / seconds
  generate_b8_tps    the same with 8 prompts of equal length: total new tokens / seconds
  matmul_gflops      2048 x 2048 @ 2048 x 2048 f32 matmul rate; matmul_gflops_bf16 in bf16

Every figure is the best (shortest) of REPS timed runs after WARMUP untimed ones (the minimum is what
other tenants of a shared machine disturb least; saescope is timed the same way) (3 and 1;
--quick: 1 and 1, with smaller shapes). Prints JSON to stdout (and to --out), progress
to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / ".cache" / "models" / "smollm2-135m"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def log(msg: str) -> None:
    print(f"[runtime_hf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--model-dir", default=str(DEFAULT_DIR))
    p.add_argument("--gguf-file", default=DEFAULT_FILE)
    p.add_argument("--quick", action="store_true", help="fewer reps, smaller shapes (smoke test)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--only", default="", help="comma list of: forward,generate,matmul (default all)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    # Threads must be fixed before torch does any work.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    dev = torch.device(args.device)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    only = {s for s in args.only.split(",") if s} or {"forward", "generate", "matmul"}

    q = args.quick
    cfg = {
        "batch": 2 if q else 8,
        "seq": 64 if q else 256,
        "gen_prompt": 16,
        "gen_new": 8 if q else 64,
        "gen_batch": 8,
        "l8_layers": 9,
        "matmul_n": 1024 if q else 2048,
        "matmul_iters": 3 if q else 5,
        "warmup": 1,
        "reps": 1 if q else 3,
    }

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> tuple[float, list[float]]:
        for _ in range(cfg["warmup"]):
            fn()
        times = []
        for _ in range(cfg["reps"]):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return min(times), times

    result: dict = {
        "framework": "hf-transformers",
        "model": "smollm2-135m",
        "dtype": args.dtype,
        "threads": args.threads,
        "device": args.device,
        "quick": q,
        "config": cfg,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    times: dict[str, list[float]] = {}

    if "matmul" in only:
        n = cfg["matmul_n"]
        # The bf16 rate only in bf16 runs: without native bf16 (an AVX2 CPU, or
        # one emulated) a 2048^3 bf16 product takes minutes.
        kinds = [("matmul_gflops", torch.float32)]
        if args.dtype == "bf16":
            kinds.append(("matmul_gflops_bf16", torch.bfloat16))
        for key, mdt in kinds:
            g = torch.Generator().manual_seed(0)
            a = torch.randn(n, n, generator=g).to(dev, mdt)
            b = torch.randn(n, n, generator=g).to(dev, mdt)

            def mm() -> None:
                for _ in range(cfg["matmul_iters"]):
                    torch.mm(a, b)

            with torch.inference_mode():
                med, ts = timed(mm)
            result[key] = 2.0 * n**3 * cfg["matmul_iters"] / med / 1e9
            times[key] = ts
            log(f"{key}: {result[key]:.1f} GFLOP/s ({n}x{n})")

    if only & {"forward", "generate"}:
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            args.model_dir, gguf_file=args.gguf_file, dtype=torch.float32
        )
        model = model.to(device=dev, dtype=dtype).eval()
        result["load_s"] = time.perf_counter() - t0
        result["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
        result["n_layers"] = model.config.num_hidden_layers
        result["n_params"] = sum(p.numel() for p in model.parameters())
        vocab = model.config.vocab_size
        log(f"loaded in {result['load_s']:.1f}s: {result['n_layers']} layers, "
            f"{result['n_params'] / 1e6:.1f}M params, {args.dtype}, attn={result['attn_implementation']}")

        if "forward" in only:
            g = torch.Generator().manual_seed(1234)
            ids = torch.randint(0, vocab, (cfg["batch"], cfg["seq"]), generator=g).to(dev)
            mask = torch.ones_like(ids)
            n_tok = ids.numel()

            def fwd_full() -> None:
                with torch.inference_mode():
                    model(input_ids=ids, attention_mask=mask, use_cache=False)

            log(f"forward_full: {cfg['batch']}x{cfg['seq']}")
            med, ts = timed(fwd_full)
            result["forward_full_tps"] = n_tok / med
            times["forward_full"] = ts
            log(f"forward_full_tps: {result['forward_full_tps']:.1f}")

            full_layers = model.model.layers
            model.model.layers = torch.nn.ModuleList(list(full_layers)[: cfg["l8_layers"]])

            def fwd_l8() -> None:
                with torch.inference_mode():
                    model.model(input_ids=ids, attention_mask=mask, use_cache=False)

            log(f"forward_l8: blocks 0..={cfg['l8_layers'] - 1}")
            try:
                med, ts = timed(fwd_l8)
            finally:
                model.model.layers = full_layers
            result["forward_l8_tps"] = n_tok / med
            times["forward_l8"] = ts
            log(f"forward_l8_tps: {result['forward_l8_tps']:.1f}")

        if "generate" in only:
            for key, bsz in (("generate_b1_tps", 1), ("generate_b8_tps", cfg["gen_batch"])):
                g = torch.Generator().manual_seed(4321)
                # ids from 3.. (skip the special tokens 0-2 so that nothing looks like padding)
                prompt = torch.randint(3, vocab, (bsz, cfg["gen_prompt"]), generator=g).to(dev)
                mask = torch.ones_like(prompt)
                new = cfg["gen_new"]
                out_len: list[int] = []

                def gen() -> None:
                    with torch.inference_mode():
                        out = model.generate(
                            input_ids=prompt, attention_mask=mask, do_sample=False, num_beams=1,
                            max_new_tokens=new, min_new_tokens=new, pad_token_id=2,
                        )
                    out_len.append(out.shape[1] - prompt.shape[1])

                log(f"{key}: batch {bsz}, prompt {cfg['gen_prompt']}, {new} new tokens")
                med, ts = timed(gen)
                assert all(n == new for n in out_len), out_len
                result[key] = bsz * new / med
                times[key] = ts
                log(f"{key}: {result[key]:.2f}")

    result["times_s"] = times
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
