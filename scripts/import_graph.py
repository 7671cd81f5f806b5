#!/usr/bin/env python3
"""The library's file-level import graph: which source file names which.

Prints import circles (strongly connected components of more than one file)
and, with --layers, every import between top-level modules. With --check it
also enforces the rules of docs/architecture.md: the allowed imports of each
top-level module (ALLOWED below), a `//!` paragraph opening every folder's
module file, and no file over MAX_LINES; it exits 1 on any violation.
tests/architecture.rs runs it in the test suite.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
PATH = re.compile(r"\b(crate|super|self)((?:::(?:super|[A-Za-z_][A-Za-z0-9_]*))+)")
MAX_LINES = 600
# What each top-level module may import (besides `error`), top to bottom:
# the table of docs/architecture.md.
ALLOWED = {
    "machine": set(),
    "io": {"machine"},
    "dist": {"machine", "io"},
    "hooks": {"machine"},
    "plots": {"machine"},
    "model": {"machine", "io", "hooks"},
    "data": {"machine", "io", "dist", "hooks", "model"},
    "sae": {"machine", "io", "hooks"},
    "train": {"machine", "io", "dist", "hooks", "model", "data", "sae", "plots"},
    "eval": {"machine", "io", "hooks", "model", "data", "sae", "plots"},
    "label": {"machine", "io", "hooks", "model", "data", "sae", "plots"},
    "steer": {"machine", "io", "dist", "hooks", "model", "sae", "plots", "train"},
    "analysis": {"machine", "io", "hooks", "model", "data", "plots"},
    "serve": {"machine", "io", "hooks", "model", "sae", "steer"},
    "bench": {"machine", "io", "dist", "hooks", "model", "data", "sae", "train", "eval", "steer"},
}
MODLINE = re.compile(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*\{")


def modules():
    """Module path (tuple) -> file, for every file of the library."""
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
            parts = rel[:-3].split(os.sep)
            if parts[0] == "cli" or parts == ["main"]:
                continue
            if parts[-1] in ("mod", "lib"):
                parts = parts[:-1]
            out[tuple(parts)] = rel
    # `#[path]` children keep their parent's module (gguf/file_tests.rs).
    return out


def edges(mods):
    files = {v: k for k, v in mods.items()}
    graph = {f: set() for f in files}
    for f, mod in files.items():
        nested = []
        depth, stack = 0, []
        for line in open(os.path.join(ROOT, f), encoding="utf-8"):
            m = MODLINE.match(line)
            # Doc links and comments name other modules without importing them.
            code = "" if line.lstrip().startswith("//") else line
            for root, rest in PATH.findall(code):
                segs = rest.split("::")[1:]
                cur = list(mod) + nested
                if root == "crate":
                    target = segs
                elif root == "self":
                    target = cur + segs
                else:
                    ups = 1
                    while segs and segs[0] == "super":
                        ups += 1
                        segs = segs[1:]
                    target = cur[: len(cur) - ups] + segs
                for n in range(len(target), -1, -1):
                    key = tuple(target[:n])
                    if key in mods:
                        if mods[key] != f:
                            graph[f].add(mods[key])
                        break
            if m:
                stack.append(depth)
                nested.append(m.group(1))
            depth += line.count("{") - line.count("}")
            while stack and depth <= stack[-1]:
                stack.pop()
                nested.pop()
    return graph


def circles(graph):
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def top(rel):
    return rel.split(os.sep)[0].removesuffix(".rs")


def violations(graph):
    out = []
    for f, targets in sorted(graph.items()):
        for t in sorted(targets):
            a, b = top(f), top(t)
            if a != b and b not in ("error", "lib") and b not in ALLOWED.get(a, set()):
                out.append(f"{f} imports {t}: `{a}` may not import `{b}`")
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            text = open(path, encoding="utf-8").read()
            rel = os.path.relpath(path, ROOT)
            if text.count("\n") > MAX_LINES:
                out.append(f"{rel} has {text.count(chr(10))} lines (at most {MAX_LINES})")
            if name in ("mod.rs", "lib.rs", "main.rs") and not text.startswith("//!"):
                out.append(f"{rel} does not open with a `//!` paragraph")
    return out


def main():
    mods = modules()
    graph = edges(mods)
    found = circles(graph)
    if "--check" in sys.argv:
        bad = violations(graph)
        for line in bad:
            print("violation:", line)
        for comp in found:
            print("circle:", " <-> ".join(comp))
        print(f"{len(graph)} files, {len(found)} circles, {len(bad)} violations")
        sys.exit(1 if found or bad else 0)
    if "--layers" in sys.argv:
        pairs = set()
        for f, targets in graph.items():
            for t in targets:
                a, b = f.split(os.sep)[0].removesuffix(".rs"), t.split(os.sep)[0].removesuffix(".rs")
                if a != b:
                    pairs.add((a, b))
        for a, b in sorted(pairs):
            print(f"{a} -> {b}")
    for comp in found:
        print("circle:", " <-> ".join(comp))
    print(f"{len(graph)} files, {sum(len(t) for t in graph.values())} imports, {len(found)} circles")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
