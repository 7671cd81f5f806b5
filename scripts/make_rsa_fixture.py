#!/usr/bin/env python3
"""Write tests/fixtures/rsa/reference.json, an independent reference for the Rust RSA code.

This is a fixture generator for the RSA tests (tests/rsa, in Rust). Every number in the JSON is
computed here with numpy and scipy, not with the Rust implementation, so the tests compare
against an outside reference. Run it from the repository root with the project venv:

    .venv/bin/pip install -q scipy        # once, if scipy is missing
    .venv/bin/python scripts/make_rsa_fixture.py [--out tests/fixtures/rsa/reference.json]

Deterministic (numpy default_rng, seed 0): rerunning with the same numpy/scipy versions writes
the same file.

Keys of the JSON object:

    representations  8 rows x 5 floats: N(0, 1) draws rounded to 6 decimals. Everything below
                     is computed from these rounded values, so the Rust side reads exactly the
                     inputs used here.
    conditions       8 condition labels, one per row.
    rdm              {"cosine", "euclidean", "correlation"}: 8 x 8 representational
                     dissimilarity matrices from scipy.spatial.distance.pdist + squareform:
                     1 - cosine similarity, Euclidean distance, 1 - Pearson correlation of the
                     two rows. Diagonal 0.
    rdm_zscored      the same three RDMs after z-scoring each column (dimension) across the 8
                     rows: (x - mean) / std with the population std (ddof = 0).
    hypothesis       8 x 8: 0 where the two rows' conditions are equal, 1 where they differ.
    spearman         {metric: r}: scipy.stats.spearmanr between the upper triangle of rdm[metric]
                     and of the hypothesis (k = 1, row-major, i < j: 28 values).
    kendall          {metric: tau}: scipy.stats.kendalltau of the same vectors; scipy's default
                     variant, tau-b (ties in the 0/1 hypothesis are corrected for).
    kendall_variant  "tau_b".
    spearman_self    spearmanr of rdm["cosine"]'s upper triangle with itself (1.0).
    upper_triangle   how the vectors were taken: {"k": 1, "order": "row-major, i < j"}.
    versions         numpy and scipy versions used.

Floats are written with Python's repr (shortest round-trip form), so parsing them as f64 gives
back the values computed here bit for bit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import scipy
from scipy.spatial.distance import pdist, squareform
from scipy.stats import kendalltau, spearmanr

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
N_ROWS, N_DIMS = 8, 5
CONDITIONS = ["a", "a", "b", "b", "c", "c", "a", "b"]
METRICS = ("cosine", "euclidean", "correlation")


def rdms(x: np.ndarray) -> dict[str, np.ndarray]:
    return {m: squareform(pdist(x, metric=m)) for m in METRICS}


def upper(m: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(m.shape[0], k=1)  # row-major order, i < j
    return m[i, j]


def as_list(m: np.ndarray) -> list:
    return [[float(v) for v in row] for row in m]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "rsa" / "reference.json"))
    args = p.parse_args()

    rng = np.random.default_rng(SEED)
    x = np.round(rng.standard_normal((N_ROWS, N_DIMS)), 6)
    # The JSON holds these rounded values; make sure reading them back gives the same floats.
    assert np.array_equal(np.array(json.loads(json.dumps(x.tolist()))), x)

    raw = rdms(x)
    z = (x - x.mean(axis=0)) / x.std(axis=0, ddof=0)
    zsc = rdms(z)
    labels = np.array(CONDITIONS)
    hyp = (labels[:, None] != labels[None, :]).astype(np.float64)
    h_up = upper(hyp)

    spearman, kendall = {}, {}
    for m in METRICS:
        v = upper(raw[m])
        spearman[m] = float(spearmanr(v, h_up).statistic)
        kendall[m] = float(kendalltau(v, h_up).statistic)  # default variant "b"
    c_up = upper(raw["cosine"])
    spearman_self = float(spearmanr(c_up, c_up).statistic)

    out = {
        "seed": SEED,
        "representations": x.tolist(),
        "conditions": CONDITIONS,
        "rdm": {m: as_list(raw[m]) for m in METRICS},
        "rdm_zscored": {m: as_list(zsc[m]) for m in METRICS},
        "hypothesis": as_list(hyp),
        "spearman": spearman,
        "kendall": kendall,
        "kendall_variant": "tau_b",
        "spearman_self": spearman_self,
        "upper_triangle": {"k": 1, "order": "row-major, i < j"},
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__},
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")

    np.set_printoptions(precision=6, suppress=True, linewidth=120)
    print(f"wrote {path}")
    print("representations:\n", x)
    print("conditions:", CONDITIONS)
    for m in METRICS:
        print(f"rdm[{m}]:\n", raw[m])
        print(f"rdm_zscored[{m}]:\n", zsc[m])
    print("hypothesis:\n", hyp)
    print("spearman:", spearman)
    print("kendall (tau-b):", kendall)
    print("spearman_self:", spearman_self)


if __name__ == "__main__":
    main()
