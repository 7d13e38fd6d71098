"""Pair building at scale: time and peak memory for 10k, 100k and 1,000,000 cells.

Cells lie on one square field at tissue density (one cell per 100 um^2) with 38-marker expression
vectors (the Damond panel size) drawn around 16 spatially patchy cell types; pairs use the default
:class:`~spatial2sentence.settings.PairSettings` (KD-tree neighbourhoods, never an n x n matrix). Each
size runs in a fresh process so its peak memory is its own: ``tracemalloc`` peak (Python/NumPy
allocations, includes the inputs) and the process's peak RSS (``resource``). Growth is compared with
n log n. Results: ``benchmarks/results/pairs.json`` and ``pairs.png``.

    python benchmarks/pairs.py                 # 10k, 100k, 1M
    python benchmarks/pairs.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def make_cells(n: int, d: int = 38, seed: int = 0):
    rng = np.random.default_rng(seed)
    side = math.sqrt(n * 100.0)
    xy = rng.uniform(0, side, (n, 2))
    # patchy types: a coarse random grid of domains, each with a dominant type
    g = max(1, int(side // 150))
    dom = rng.integers(0, 16, (g + 1, g + 1))
    cell_type = dom[(xy[:, 0] // 150).astype(int).clip(0, g), (xy[:, 1] // 150).astype(int).clip(0, g)]
    mix = rng.random(n) < 0.3
    cell_type[mix] = rng.integers(0, 16, mix.sum())
    prof = rng.normal(0, 1, (16, d)).astype(np.float32)
    v = prof[cell_type] + rng.normal(0, 0.5, (n, d)).astype(np.float32)
    return xy, v


def run_one(n: int) -> dict:
    from spatial2sentence.pairs import build_pairs
    from spatial2sentence.settings import PairSettings

    xy, v = make_cells(n)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    p = build_pairs(xy, v, settings=PairSettings())
    sec = time.perf_counter() - t0
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n_cells": n,
        "seconds": round(sec, 3),
        "peak_traced_mb": round(peak / 1e6, 1),
        "peak_rss_mb": round(rss, 1),
        "rss_before_mb": round(rss0, 1),
        "input_mb": round((xy.nbytes + v.nbytes) / 1e6, 1),
        "positives_found": round(float((p.pos_idx >= 0).mean()), 4),
        "negatives_found": round(float((p.neg_idx >= 0).mean()), 4),
        "nxn_float32_would_be_gb": round(n * n * 4 / 1e9, 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one)))
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{n:>9,} cells: {r['seconds']:7.2f} s, peak traced {r['peak_traced_mb']:7.1f} MB, "
              f"peak RSS {r['peak_rss_mb']:7.1f} MB (an n x n float32 matrix: {r['nxn_float32_would_be_gb']} GB)")
    base = rows[0]
    for r in rows:
        r["time_ratio"] = round(r["seconds"] / base["seconds"], 2)
        nl = (r["n_cells"] * math.log(r["n_cells"])) / (base["n_cells"] * math.log(base["n_cells"]))
        r["nlogn_ratio"] = round(nl, 2)
        r["linear_ratio"] = round(r["n_cells"] / base["n_cells"], 2)
    if len(rows) > 1:
        ns = np.log([r["n_cells"] for r in rows])
        ts = np.log([r["seconds"] for r in rows])
        slope = float(np.polyfit(ns, ts, 1)[0])
    else:
        slope = float("nan")
    res = {
        "benchmark": "pair building (positives: KD-tree neighbours; negatives: random same-image candidates)",
        "settings": __import__("spatial2sentence.settings", fromlist=["PairSettings"]).PairSettings().to_dict(),
        "markers": 38,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "load_average_1_5_15min_at_end": [round(x, 2) for x in __import__("os").getloadavg()]},
        "results": rows,
        "log_log_slope_time_vs_n": round(slope, 3),
        "note": "n log n growth has a log-log slope slightly above 1; memory stays O(n). Times are wall "
                "clock on a shared machine.",
    }
    for r in rows:
        print(f"  time x{r['time_ratio']} vs n log n x{r['nlogn_ratio']} (linear x{r['linear_ratio']})")
    print(f"log-log slope of time vs n: {slope:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pairs.json").write_text(json.dumps(res, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        n = np.array([r["n_cells"] for r in rows], float)
        t = np.array([r["seconds"] for r in rows])
        ax[0].loglog(n, t, "o-", label="measured")
        ax[0].loglog(n, t[0] * n * np.log(n) / (n[0] * np.log(n[0])), "--", label="n log n")
        ax[0].set_xlabel("cells")
        ax[0].set_ylabel("seconds")
        ax[0].legend()
        ax[1].loglog(n, [r["peak_rss_mb"] for r in rows], "o-", label="peak RSS")
        ax[1].loglog(n, [r["peak_traced_mb"] for r in rows], "s-", label="peak traced")
        ax[1].axhline(2000, color="r", ls=":", label="2 GB")
        ax[1].set_xlabel("cells")
        ax[1].set_ylabel("MB")
        ax[1].legend()
        fig.suptitle("spatial2sentence pair building")
        fig.tight_layout()
        fig.savefig(RESULTS / "pairs.png", dpi=90)
    except Exception as err:  # pragma: no cover
        print(f"(no figure: {err})")
    print(f"saved {RESULTS / 'pairs.json'}")


if __name__ == "__main__":
    main()
