"""Helpers the benchmark drivers share: reading a child's JSON report, numbers
from it, and printing and saving a run's result."""

from __future__ import annotations

import json
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
