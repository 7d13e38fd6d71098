"""Is an image's status read better from one tissue prompt of the whole image or from the mean over
tissue prompts of windows of it?

    python benchmarks/probes/tissue_windows.py DATASET [SEEDS] [WINDOWS] [--sim-cells PATH]

Why: s2s reads an image's clinical status from one tissue prompt of all its cells
(``spatial2sentence.predict.tissue_status``), while training writes tissue prompts of random windows
(``spatial2sentence.tissue.random_window``: the k cells nearest a random cell, k between a quarter of the
image and all of it). The status varies a lot between seeds (semi-synthetic s2s 55.3 ± 4.9; negatives off
45.3). Averaging the reader's probabilities over windows of the test image (test-time augmentation with
the training's own windows) might steady it. This probe trains the benchmark's ``s2s`` (its budget,
folds, training-cell sample and validation rule) once per fold and seed and reads each test image's
status both ways: the whole image, and the mean over the whole image and WINDOWS random windows (seeded
per image). Prints per-image accuracy per way, pooled per seed as the benchmark pools them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from spatial2sentence.bench.datasets import load_builtin
from spatial2sentence.bench.methods import Budget
from spatial2sentence.bench.runner import fold_splits, lm_table, train_lm
from spatial2sentence.cellset import prepare_cells
from spatial2sentence.predict import read_tissues
from spatial2sentence.threads import torch_threads
from spatial2sentence.tissue import random_window

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("seeds", nargs="?", type=int, default=1)
    ap.add_argument("windows", nargs="?", type=int, default=16)
    ap.add_argument("--sim-cells", default=None)
    args = ap.parse_args()
    ds = load_builtin(args.dataset, ROOT.parent / "shared" / "data", sim_cells=args.sim_cells)
    budget = Budget(seeds=args.seeds)
    type_labels = sorted(ds.df["cell_type"].astype(str).unique()) if ds.cell_type else []
    status_labels = sorted(ds.df["stage"].astype(str).unique())
    hits = {s: {"whole": [], "windows": []} for s in range(args.seeds)}
    t0 = time.time()
    for seed, f, nf, train_df, test_df, _idx in fold_splits(ds, budget):
        with tempfile.TemporaryDirectory() as wd, warnings.catch_warnings(), torch_threads(budget.threads):
            warnings.simplefilter("ignore")
            model = train_lm("s2s", ds, train_df, budget, seed, wd, type_labels, status_labels).model
            cs = prepare_cells(lm_table(test_df, ds, False), model.markers, model.normalizer, source="test")
            truth = test_df.groupby("image")["stage"].first().astype(str)
            labels = np.asarray(model.status_labels)
            for im, true in truth.items():
                cells = np.flatnonzero(cs.image == im)
                rng = np.random.default_rng(len(cells))
                sets = [cells] + [random_window(cs, cells, rng) for _ in range(args.windows)]
                prob = read_tissues(model, cs, sets)
                hits[seed]["whole"].append(labels[prob[0].argmax()] == true)
                hits[seed]["windows"].append(labels[prob.mean(0).argmax()] == true)
        print(f"seed {seed} fold {f + 1}/{nf}: whole {np.mean(hits[seed]['whole']):.3f}, "
              f"windows {np.mean(hits[seed]['windows']):.3f} so far; {time.time() - t0:.0f} s", flush=True)
    for way in ("whole", "windows"):
        acc = [100 * np.mean(hits[s][way]) for s in range(args.seeds)]
        print(f"{args.dataset} s2s image status, {way}: {np.mean(acc):.1f} ± {np.std(acc):.1f} "
              f"({args.seeds} seeds, {args.windows} windows)")


if __name__ == "__main__":
    main()
