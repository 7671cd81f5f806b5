#!/usr/bin/env python3
"""Summarises an eval/icl/run_study.sh output folder into eval/icl/results.md
(numbers only; the findings are written in eval/icl/REPORT.md) and copies the
figures it cites into eval/icl/figures/.

    .venv/bin/python eval/icl/make_report.py OUT
"""
import json
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = ["linear_regression", "reading_comprehension", "prompt_injection"]


def load(path):
    return json.loads(path.read_text()) if path.is_file() else None


def cpu():
    model, flags = "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    tiers = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} ({', '.join(tiers)})"


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def peak(values):
    i = max(range(len(values)), key=lambda k: values[k])
    return i, values[i]


def ratio_section(r, lines):
    lines.append("| condition | prompts | accuracy | mean ratio (geometric) | peak layer (ratio) |")
    lines.append("|---|---:|---:|---:|---|")
    for c in r["conditions"]:
        layer, value = peak(c["per_layer"])
        lines.append(f"| {c['condition']} | {c['prompts']} | {pct(c['accuracy'])} | {c['mean']:.3f} | L{layer} ({value:.2f}) |")
    p = r.get("paired")
    if p:
        o = p["overall"]
        lines.append("")
        lines.append(f"Paired over {o['n']} groups, {p['before']} → {p['after']}: mean Δ log ratio "
                     f"{o['mean_difference']:+.3f} (t = {o['t']:.2f}, sign-flip p = {o['p']:.4f}).")
        top = sorted(range(len(p["per_layer"])), key=lambda k: -p["per_layer"][k]["mean_difference"])[:4]
        cells = ", ".join(f"L{k} {p['per_layer'][k]['mean_difference']:+.2f} (p {p['per_layer'][k]['p']:.4f})" for k in top)
        lines.append(f"Largest per-layer increases: {cells}.")
        down = [k for k, t in enumerate(p["per_layer"]) if t["mean_difference"] < 0 and t["p"] < 0.05]
        if down:
            lines.append("Significant decreases (p < 0.05): " + ", ".join(f"L{k}" for k in down) + ".")


def rsa_line(name, r, lines):
    rhos = [h["fits"][0]["correlation"] for h in r["hooks"]]
    ps = [h["fits"][0]["p_value"] for h in r["hooks"]]
    layer, value = peak(rhos)
    significant = sum(p < 0.05 for p in ps)
    lines.append(f"| {name} | {len(r['prompt_ids'])} | {pct(r.get('accuracy'))} | {rhos[0]:+.3f} | "
                 f"{value:+.3f} at L{layer} (p {ps[layer]:.4f}) | {rhos[-1]:+.3f} | {significant}/{len(rhos)} |")


def probe_line(name, r, lines):
    scores = [h["score"] for h in r["hooks"]]
    layer, value = peak(scores)
    control = r["hooks"][layer]["control"]
    lines.append(f"| {name} | {r['n_prompts']} | {r['metric']} | {scores[0]:.3f} | {value:.3f} at L{layer} | "
                 f"{control:.3f} | {value - control:+.3f} |")


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "out" / "icl"
    figures = HERE / "figures"
    figures.mkdir(exist_ok=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    timings = (out / "timings.txt").read_text().strip().splitlines() if (out / "timings.txt").is_file() else []
    lines = [
        "# ICL study: numbers",
        "",
        "Written by `eval/icl/make_report.py` from `bash eval/icl/run_study.sh`; the findings are in",
        "[REPORT.md](REPORT.md). SmolLM2-135M-Instruct (Q4_1 GGUF, run in f32), 2 threads.",
        "",
        f"- machine: {cpu()}, {platform.machine()}",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, commit {git}",
        f"- run times: {'; '.join(timings)}",
        "",
    ]
    for task in TASKS:
        d = out / task
        lines += [f"## {task.replace('_', ' ')}", ""]
        ratio = load(d / "ratio" / "attention_ratio.json")
        if ratio:
            lines.append(f"### Attention ratio (query → `{ratio['relevant']}` / `{ratio['irrelevant']}`)")
            lines.append("")
            ratio_section(ratio, lines)
            for name in ["ratio_layers.svg", "ratio_heads_with_examples.svg", "ratio_heads_no_examples.svg"]:
                src = d / "ratio" / name
                if src.is_file():
                    dst = figures / f"{task}_{name}"
                    shutil.copyfile(src, dst)
            lines += ["", f"![ratio by layer](figures/{task}_ratio_layers.svg)", ""]
        rsa_rows = []
        for name, sub in [("all prompts, `condition` hypothesis", "rsa_condition"),
                          ("no_examples, `label` hypothesis", "rsa_label_no_examples"),
                          ("with_examples, `label` hypothesis", "rsa_label_with_examples")]:
            r = load(d / sub / "rsa.json")
            if r:
                rsa_rows.append((name, sub, r))
        if rsa_rows:
            lines += ["### RSA (query span, mean-pooled, 1 − cosine, Spearman, 1000 permutations)", "",
                      "| prompts, hypothesis | n | accuracy | ρ at L0 | peak ρ | ρ at L29 | layers p < 0.05 |",
                      "|---|---:|---:|---:|---|---:|---:|"]
            for name, sub, r in rsa_rows:
                rsa_line(name, r, lines)
                src = d / sub / "rsa_layers.svg"
                if src.is_file():
                    shutil.copyfile(src, figures / f"{task}_{sub}.svg")
            lines += ["", " ".join(f"![{sub}](figures/{task}_{sub}.svg)" for _, sub, _ in rsa_rows), ""]
        probes = [(c, load(d / f"probe_{c}" / "probe.json")) for c in ["no_examples", "with_examples"]]
        probes = [(c, r) for c, r in probes if r]
        if probes:
            lines += ["### Probes (query span, 5-fold, L2 100, control = shuffled targets)", "",
                      "| condition | n | metric | at L0 | best | control there | selectivity |",
                      "|---|---:|---|---:|---|---:|---:|"]
            for c, r in probes:
                probe_line(c, r, lines)
                src = d / f"probe_{c}" / "probe_layers.svg"
                if src.is_file():
                    shutil.copyfile(src, figures / f"{task}_probe_{c}.svg")
            lines += ["", " ".join(f"![probe {c}](figures/{task}_probe_{c}.svg)" for c, _ in probes), ""]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / 'results.md'} and {figures}/")


if __name__ == "__main__":
    main()
