"""The thread policy of prediction, side by side: cells/s at 1 and 2 scoring threads and at the default
(``spatial2sentence.threads.default_workers``: the cores free right now), on a quiet machine and with one
other core-bound process running, in one run.

Each scoring thread runs one batch on one torch thread (so the probabilities are the same bits at any
setting: the script checks that too). Cells: the default model's 1,200 check cells (6 held-out
semi-synthetic images), type + clinical status, float32, the embedded model; median of ``--repeats``.

    python benchmarks/threads.py [--repeats 3]

Results: ``benchmarks/results/threads.json`` and ``threads.png``. "Quiet" means no process of this
script's making; the JSON records the load average at each measurement.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from spatial2sentence.domain import CHECK_CELLS  # noqa: E402
from spatial2sentence.model import DEFAULT_MODEL_DIR, S2SModel  # noqa: E402
from spatial2sentence.threads import available_cores, default_workers  # noqa: E402


def _spin(stop):
    while not stop.is_set():
        pass


def measure(model, cells, threads, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.predict_cells(cells, threads=threads).cells
        times.append(time.perf_counter() - t0)
    return len(cells) / float(np.median(times)), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    model = S2SModel.from_pretrained(None, device="cpu")
    cells = pd.read_csv(DEFAULT_MODEL_DIR / CHECK_CELLS).drop(columns=["cell_type"])
    model.predict_cells(cells.head(200))  # warm-up
    rows, reference = [], None
    for condition in ("quiet", "one busy core"):
        stop = mp.Event()
        spinner = mp.Process(target=_spin, args=(stop,)) if condition != "quiet" else None
        if spinner is not None:
            spinner.start()
            time.sleep(2.0)
        try:
            for label, threads in (("1", 1), ("2", 2), ("default", None)):
                chosen = default_workers() if threads is None else threads
                rate, out = measure(model, cells, threads, args.repeats)
                if reference is None:
                    reference = out
                same = bool(reference.equals(out))
                rows.append({"condition": condition, "threads": label, "workers_used": chosen,
                             "cells_per_s": round(rate, 1), "load_avg_1min": round(os.getloadavg()[0], 2),
                             "identical_to_first": same})
                print(f"{condition:14s} threads={label:8s} (used {chosen}): {rate:7.1f} cells/s, "
                      f"identical: {same}", flush=True)
        finally:
            if spinner is not None:
                stop.set()
                spinner.join()
    df = pd.DataFrame(rows)
    summary = {}
    for condition, g in df.groupby("condition", sort=False):
        best = g[g["threads"] != "default"]["cells_per_s"].max()
        default = float(g[g["threads"] == "default"]["cells_per_s"].iloc[0])
        summary[condition] = {"default_over_best_fixed": round(default / best, 3)}
    res = {"command": "python benchmarks/threads.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
           "cores": available_cores(), "cells": int(len(cells)), "rows": rows, "summary": summary,
           "target": "default >= 0.9 x the best fixed thread count in both conditions"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "threads.json").write_text(json.dumps(res, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        conds = list(dict.fromkeys(df["condition"]))
        for k, lab in enumerate(("1", "2", "default")):
            vals = [float(df[(df.condition == c) & (df.threads == lab)]["cells_per_s"].iloc[0]) for c in conds]
            ax.bar(np.arange(len(conds)) + (k - 1) * 0.27, vals, width=0.27, label=f"threads={lab}")
        ax.set_xticks(range(len(conds)), conds)
        ax.set_ylabel("cells / s (type + status)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "threads.png", dpi=120)
    except ImportError:
        pass
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
