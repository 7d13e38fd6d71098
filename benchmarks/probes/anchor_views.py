"""Does s2s read held-out cells (a CyCIF strip by default) better from its whole prompt, from the anchor's
sentence alone, or from the mean of the two?

    python benchmarks/probes/anchor_views.py [SEEDS] [METHOD] [--dataset NAME] [--sim-cells CSV]

(``--dataset``: any built-in benchmark dataset with a cell-type task, default ``scimap_cycif``; the
semi-synthetic one needs ``--sim-cells`` as in ``s2s benchmark``.)

Why: on CyCIF (3 seeds x 4 strips, ``benchmarks/results/cycif_v2``) s2s reads 78.1% against 79.7% for
c2s, the same model reading one cell alone. s2s is trained on both views (``TrainSettings.anchor_alone``:
30% of its type prompts show the anchor alone), so one trained model can be asked both ways. This probe
trains the benchmark's ``s2s`` (``spatial2sentence.bench.methods.lm_settings``, the benchmark's budget,
folds, validation rule and test cells) once per strip and seed, and scores the test cells with the whole
prompt (anchor, partners, ``around`` line), with the anchor alone, and with the mean of the two
probabilities. Prints accuracy and macro-F1 per view, pooled per seed as the benchmark pools them.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import replace
from pathlib import Path
import tempfile

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from spatial2sentence.bench.datasets import load_builtin
from spatial2sentence.bench.methods import Budget
from spatial2sentence.bench.runner import align_labels, fold_splits, lm_predict, lm_table, train_lm
from spatial2sentence.threads import torch_threads

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("seeds", nargs="?", type=int, default=1)
    ap.add_argument("method", nargs="?", default="s2s")
    ap.add_argument("--dataset", default="scimap_cycif")
    ap.add_argument("--sim-cells", default=None)
    args = ap.parse_args()
    seeds, method = args.seeds, args.method
    ds = load_builtin(args.dataset, ROOT.parent / "shared" / "data", sim_cells=args.sim_cells)
    budget = Budget(seeds=seeds)
    labels = sorted(ds.df["cell_type"].astype(str).unique())
    pooled = {s: {v: ([], []) for v in ("whole", "alone", "mean")} for s in range(seeds)}
    t0 = time.time()
    for seed, f, nf, train_df, test_df, idx in fold_splits(ds, budget):
        with tempfile.TemporaryDirectory() as wd, warnings.catch_warnings(), torch_threads(budget.threads):
            warnings.simplefilter("ignore")
            model = train_lm(method, ds, train_df, budget, seed, wd, type_labels=labels).model
            table = lm_table(test_df, ds, False)
            whole = lm_predict(model, table, idx, ["type"], threads=budget.threads)["type"]
            model.prompt = replace(model.prompt, format="single")
            alone = lm_predict(model, table, idx, ["type"], threads=budget.threads)["type"]
        truth = test_df["cell_type"].astype(str).to_numpy()[idx]
        for view, prob in (("whole", whole), ("alone", alone), ("mean", (whole + alone) / 2)):
            call = np.asarray(labels)[align_labels(prob, model.type_labels, labels).argmax(1)]
            pooled[seed][view][0].extend(truth)
            pooled[seed][view][1].extend(call)
            print(f"seed {seed} strip {f + 1}/{nf} {view}: {accuracy_score(truth, call):.3f}", flush=True)
        print(f"  {time.time() - t0:.0f} s", flush=True)
    for view in ("whole", "alone", "mean"):
        acc = [accuracy_score(*pooled[s][view]) for s in range(seeds)]
        f1 = [f1_score(*pooled[s][view], average="macro") for s in range(seeds)]
        print(f"{args.dataset} {method} {view}: accuracy {100 * np.mean(acc):.1f} ± {100 * np.std(acc):.1f}, "
              f"macro-F1 {100 * np.mean(f1):.1f} ± {100 * np.std(f1):.1f} ({seeds} seeds)")


if __name__ == "__main__":
    main()
