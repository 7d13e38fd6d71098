"""Train on your own panel, as a user would: the real scimap CyCIF table (3,029 cells, 33 markers, 25
gated phenotypes), cut into 4 vertical strips of equal cell counts; train on 3 strips exactly as
``s2s train --table`` does (default settings, validation on a held-out block of each strip, early
stopping), predict the 4th. Side by side on the same split: logistic regression on the arcsinh markers
(the classical baseline), and a model trained from labels on a quarter of the cells of ONE training
strip (as a user clicking cells would give), predicted on the same held-out strip.

    python benchmarks/own_panel.py [--test-strip 4] [--steps 1500]

Results: ``benchmarks/results/own_panel.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from spatial2sentence.settings import TrainSettings  # noqa: E402
from spatial2sentence.tables import read_cells_table  # noqa: E402
from spatial2sentence.training import train  # noqa: E402

DATA = Path(os.environ.get("S2S_DATA", REPO.parent / "shared" / "data"))


def strips(df: pd.DataFrame, n: int = 4) -> np.ndarray:
    q = np.quantile(df["x"].to_numpy(), np.linspace(0, 1, n + 1)[1:-1])
    return np.searchsorted(q, df["x"].to_numpy(), side="right") + 1


def lm_accuracy(train_df, test_df, markers, steps, out) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    ts = TrainSettings(steps=steps, val_split="blocks", num_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = train(train_df, out, train_settings=ts, progress_bar=False, log=lambda *a: None).model
        secs = time.perf_counter() - t0
        pred = model.predict_cells(test_df.drop(columns=["cell_type"]), markers=markers, tasks=("type",),
                                   threads=1).cells
    truth = test_df["cell_type"].astype(str).to_numpy()
    got = pred["cell_type"].astype(str).to_numpy()
    from sklearn.metrics import f1_score

    return float(np.mean(got == truth)), float(f1_score(truth, got, average="macro")), secs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-strip", type=int, default=4)
    ap.add_argument("--steps", type=int, default=TrainSettings().steps)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "own_panel.json"))
    args = ap.parse_args(argv)
    src = DATA / "scimap_cycif"
    raw = pd.read_csv(src / "example_data.csv")
    import anndata as ad

    labels = ad.read_h5ad(src / "example_data.h5ad").obs["phenotype"].astype(str)
    raw["phenotype"] = labels.reindex("230_" + raw["CellID"].astype(str)).to_numpy()  # obs names: 230_<CellID>
    cols = list(raw.columns[1:list(raw.columns).index("X_position")])
    markers = [c for c in cols if not c.startswith(("DNA", "BG"))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cells.csv"
        raw.to_csv(path, index=False)
        cells = read_cells_table(path, markers=markers, label_col="phenotype")
    cells["strip"] = strips(cells)
    cells["image"] = "strip" + cells["strip"].astype(str)
    test = cells[cells["strip"] == args.test_strip].drop(columns=["strip"])
    train_all = cells[cells["strip"] != args.test_strip].drop(columns=["strip"])
    rng = np.random.default_rng(0)
    first = sorted(set(train_all["image"]))[0]
    one = train_all[train_all["image"] == first].copy()
    keep = rng.random(len(one)) < 0.25
    one.loc[~keep, "cell_type"] = None  # unlabelled cells stay as partners
    res = {"command": "python benchmarks/own_panel.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
           "data": "scimap CyCIF example (3,029 cells, 33 markers, 25 gated phenotypes), 4 vertical strips",
           "test_strip": args.test_strip, "n_train": int(len(train_all)), "n_test": int(len(test)),
           "steps_max": args.steps}
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    Xtr, Xte = np.arcsinh(train_all[markers].to_numpy() / 150), np.arcsinh(test[markers].to_numpy() / 150)
    lr = LogisticRegression(max_iter=3000, C=1.0).fit(Xtr, train_all["cell_type"].astype(str))
    got = lr.predict(Xte)
    truth = test["cell_type"].astype(str).to_numpy()
    res["logreg"] = {"accuracy": float(np.mean(got == truth)), "macro_f1": float(f1_score(truth, got, average="macro"))}
    print("logreg", res["logreg"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        acc, f1, secs = lm_accuracy(train_all, test, markers, args.steps, Path(tmp) / "all")
        res["s2s_3_strips"] = {"accuracy": acc, "macro_f1": f1, "train_s": round(secs, 1)}
        print("s2s, 3 strips", res["s2s_3_strips"], flush=True)
        acc, f1, secs = lm_accuracy(one, test, markers, args.steps, Path(tmp) / "quarter")
        res["s2s_quarter_of_one_strip"] = {"accuracy": acc, "macro_f1": f1, "train_s": round(secs, 1),
                                           "labelled_cells": int(keep.sum())}
        print("s2s, a quarter of one strip", res["s2s_quarter_of_one_strip"], flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
