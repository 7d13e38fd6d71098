"""How accurate is a model when the image carries only part of its panel? The measurement behind the
domain guard's threshold (``spatial2sentence.domain``).

Random panel subsets of k of the model's markers (several draws per k, seeded) are given to the model on
semi-synthetic images of the three donors the default model never saw in training (6126, 6414, 6180;
rendered by ``s2s simulate``, seed 0), and the cell-type accuracy is measured against the known types.
Side by side: the majority-class baseline, the full panel, and the real Damond toy crops (their own 5
markers, the model's 16 types mapped to beta / alpha / other).

Threshold rule (ours): the smallest panel fraction at which the mean accuracy over draws reaches half
the way from the majority-class baseline to the full-panel accuracy, and stays there for every larger
fraction measured. Results: ``benchmarks/results/coverage.json`` and ``coverage.png``.

    python benchmarks/coverage.py [--model DIR] [--draws 4] [--sim-dir out/coverage_sim]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from spatial2sentence.aliases import canonical_marker  # noqa: E402
from spatial2sentence.cellset import marker_columns  # noqa: E402
from spatial2sentence.model import S2SModel  # noqa: E402
from spatial2sentence.bench.simulate import simulate_dataset  # noqa: E402
from spatial2sentence.tables import load_table  # noqa: E402

DATA = Path(os.environ.get("S2S_DATA", REPO.parent / "shared" / "data"))
# two images per held-out donor: E = 6126 (Non-diabetic), G/H = 6414 (Onset), J/K = 6180 (Long-duration)
HELD_OUT_IMAGES = ["E17", "E32", "G32", "H16", "J07", "K09"]
SIZES = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 30, 37]


def accuracy(model, cells: pd.DataFrame, markers: list[str], truth: np.ndarray) -> float:
    meta = [c for c in ("image", "Object", "x", "y") if c in cells.columns]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = model.predict_cells(cells[meta + markers], markers=markers, tasks=("type",),
                                   allow_partial_panel=True, threads=1)
    return float(np.mean(pred.cells["cell_type"].to_numpy(object) == truth))


def toy_accuracy(model) -> dict:
    cells = load_table(DATA / "damond_pancreas_toy", progress=False)
    markers = marker_columns(cells.drop(columns=["cell_type", "stage", "donor"], errors="ignore"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = model.predict_cells(cells, markers=markers, tasks=("type",), allow_partial_panel=True, threads=1)
    mapped = pred.cells["cell_type"].map(lambda t: t if t in ("beta", "alpha") else "other")
    cov = model.panel_coverage(markers)
    return {"markers": markers, "present": cov.present, "fraction": cov.fraction,
            "accuracy_3class": float(np.mean(mapped.to_numpy() == cells["cell_type"].to_numpy())),
            "n_cells": int(len(cells))}


def write_check_cells(cells: pd.DataFrame, model_dir: Path, per_image: int = 200) -> Path:
    """The model folder's check cells (``spatial2sentence.domain.CHECK_CELLS``): from each held-out
    image, the ``per_image`` cells nearest its centre (a contiguous region, so partners stay neighbours),
    with their marker means and true types."""
    from spatial2sentence.domain import CHECK_CELLS
    from spatial2sentence.io import write_csv_atomic

    parts = []
    for _, sub in cells.groupby("image", sort=True):
        centre = sub[["x", "y"]].median().to_numpy()
        d = np.hypot(*(sub[["x", "y"]].to_numpy() - centre).T)
        parts.append(sub.iloc[np.argsort(d, kind="stable")[:per_image]])
    keep = ["image", "Object", "x", "y"] + marker_columns(
        cells.drop(columns=["cell_type", "stage", "donor"], errors="ignore")) + ["cell_type"]
    out = pd.concat(parts)[keep].round(4)
    return write_csv_atomic(out, model_dir / CHECK_CELLS, index=False)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    ap.add_argument("--draws", type=int, default=4, help="random panel subsets per size")
    ap.add_argument("--sim-dir", default=str(REPO / "out" / "coverage_sim"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--write-check-cells", metavar="MODEL_DIR", default=None,
                    help="only write the check cells of the domain guard into MODEL_DIR and stop")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    sim = Path(args.sim_dir)
    if not (sim / "labels.csv").exists():
        print(f"simulating {len(HELD_OUT_IMAGES)} held-out-donor images into {sim} ...", flush=True)
        simulate_dataset(DATA / "damond_diabetes_layouts" / "cells.csv.gz", sim, images=HELD_OUT_IMAGES, seed=0)
    cells = load_table(sim, progress=False)
    if args.write_check_cells:
        path = write_check_cells(cells, Path(args.write_check_cells))
        print(f"check cells -> {path}")
        return {}
    model = S2SModel.from_pretrained(args.model, device="cpu")
    panel = [c for c in marker_columns(cells.drop(columns=["cell_type", "stage", "donor"], errors="ignore"))
             if canonical_marker(c) in set(model.markers)]
    truth = cells["cell_type"].to_numpy(object)
    majority = float(pd.Series(truth).value_counts(normalize=True).iloc[0])
    rng = np.random.default_rng(0)
    rows = []
    for k in [s for s in SIZES if s <= len(panel)]:
        draws = 1 if k == len(panel) else args.draws
        for d in range(draws):
            subset = sorted(rng.choice(len(panel), size=k, replace=False))
            markers = [panel[j] for j in subset]
            acc = accuracy(model, cells, markers, truth)
            rows.append({"k": k, "fraction": k / len(model.markers), "draw": d, "accuracy": acc,
                         "markers": markers})
            print(f"k={k:2d} draw {d}: accuracy {acc:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    by_k = df.groupby("k").agg(fraction=("fraction", "first"), mean=("accuracy", "mean"),
                               sd=("accuracy", "std"), lo=("accuracy", "min"), hi=("accuracy", "max"))
    full = float(by_k["mean"].iloc[-1])
    target = majority + 0.5 * (full - majority)
    ok = (by_k["mean"] >= target).to_numpy()
    # smallest fraction from which every larger measured fraction also reaches the target
    first = next((i for i in range(len(ok)) if ok[i:].all()), len(ok) - 1)
    threshold = float(by_k["fraction"].iloc[first])
    toy = toy_accuracy(model)
    res = {
        "command": "python benchmarks/coverage.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
        "model": args.model or "default",
        "data": f"semi-synthetic images {', '.join(HELD_OUT_IMAGES)} (held-out donors), {len(cells)} cells",
        "model_markers": len(model.markers), "panel_markers_measured": len(panel),
        "majority_baseline": majority, "full_panel_accuracy": full, "target_accuracy": target,
        "threshold_fraction": threshold,
        "by_size": by_k.reset_index().to_dict(orient="records"), "draws": rows,
        "real_toy_crops": toy, "wall_s": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4))
        ax.scatter(df["fraction"], df["accuracy"], s=10, color="0.6", label="one random subset")
        ax.errorbar(by_k["fraction"], by_k["mean"], yerr=by_k["sd"].fillna(0), color="C0", marker="o",
                    label="mean ± sd")
        ax.axhline(majority, color="C3", ls=":", label=f"majority class {majority:.2f}")
        ax.axhline(target, color="C2", ls="--", label=f"target {target:.2f}")
        ax.axvline(threshold, color="k", ls="--", lw=0.8, label=f"threshold {threshold:.0%} of panel")
        ax.scatter([toy["fraction"]], [toy["accuracy_3class"]], marker="*", s=120, color="C1",
                   label="real toy crops (3 classes)")
        ax.set_xlabel("fraction of the model's markers present")
        ax.set_ylabel("cell-type accuracy (held-out donors)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "coverage.png", dpi=120)
    except ImportError:
        pass
    print(f"majority {majority:.3f}, full panel {full:.3f}, target {target:.3f}: threshold {threshold:.3f} "
          f"of the panel; real toy crops {toy['fraction']:.3f} of the panel, 3-class accuracy "
          f"{toy['accuracy_3class']:.3f} -> {out / 'coverage.json'}")
    return res


if __name__ == "__main__":
    main()
