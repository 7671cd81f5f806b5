#!/usr/bin/env python3
"""Indirect-object identification pairs for `saescope patch`, from the IOI
prompts of eval/tasks/ioi/test.jsonl (Wang et al. 2022's template).

    python3 eval/patching/make_ioi.py      # writes eval/patching/ioi.jsonl

Each line of the source names two people, then repeats one of them (the
subject S) after the comma, e.g. "When A and B were at the P, B passed a X
to", with target " S" (which the steering task wants) and foil " IO" (the
indirect object, the model's answer). Here:
- clean: the prompt as it is; answer " IO", wrong " S";
- corrupted: the second mention of S replaced by a third name C from the same
  file (Wang et al.'s "ABC" corruption), so nothing tells A from B any more.
Names are single tokens of SmolLM2 (they are the source task's answers), so
clean and corrupted have the same token length; `saescope patch` checks it.
Deterministic: C is the next name in a fixed order that differs from A and B.
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "tasks" / "ioi" / "test.jsonl"


def main() -> None:
    rows = [json.loads(line) for line in SOURCE.read_text().splitlines() if line.strip()]
    names = sorted({r["target"].strip() for r in rows} | {r["foil"].strip() for r in rows})
    out = []
    for i, r in enumerate(rows):
        clean, s, io = r["prompt"], r["target"].strip(), r["foil"].strip()
        at = clean.rfind(f", {s} ")
        if at < 0 or clean.count(io) != 1:
            raise SystemExit(f"line {i + 1}: no repeated subject after a comma in {clean!r}")
        c = next(n for k in range(1, len(names)) if (n := names[(names.index(s) + k) % len(names)]) not in (s, io))
        start = at + 2
        corrupted = clean[:start] + c + clean[start + len(s):]
        out.append({"clean": clean, "corrupted": corrupted, "answer": f" {io}", "wrong": f" {s}"})
    path = HERE / "ioi.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in out))
    print(f"wrote {len(out)} pairs to {path}")


if __name__ == "__main__":
    main()
