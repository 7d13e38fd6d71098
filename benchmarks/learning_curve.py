"""Learning curve: training steps vs held-out accuracy of s2s and c2s (the accuracy benchmark's rule).

For each dataset (the 3 real Damond toy crops, leave one crop out; the scimap CyCIF image, 4 strips,
leave one strip out), each fold of seed 0 and each of ``s2s`` / ``c2s``: one language model trained
exactly as ``s2s benchmark`` trains it (:func:`spatial2sentence.bench.methods.lm_settings` with the
default ``Budget``: the same sentences, sampling and validation split), except that it runs the full
``--steps`` without early stopping. Every ``--every`` steps the model predicts the held-out fold's cells
(the benchmark's own prediction path, partners from the whole test image) and the accuracy and
macro-F1 are recorded, together with the validation score; the step where the benchmark's early
stopping (patience on the budget's ``select_by`` score) would have stopped is marked. Held-out folds
are never used to choose anything.

    python benchmarks/learning_curve.py [--steps 3000] [--every 250] [--workers 2]

Results: ``benchmarks/results/learning_curve.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

DATASETS = ("damond_pancreas_toy", "scimap_cycif")
METHODS = ("s2s", "c2s")


def one_curve(job):
    """(dataset, fold, method) -> per-step held-out accuracy / macro-F1 and the validation history."""
    from threadpoolctl import threadpool_limits

    from spatial2sentence.bench import runner as Bm
    from spatial2sentence.threads import torch_threads
    from spatial2sentence.training import observe_steps, selection_score

    name, f, method, steps, every, data_root = job
    warnings.simplefilter("ignore")
    ds = Bm.load_builtin(name, Path(data_root), log=lambda *a: None)
    groups = Bm.group_of(ds)
    test_groups = Bm.make_folds(ds, 0)[f]
    te = np.isin(groups, test_groups)
    train_df, test_df = ds.df[~te].reset_index(drop=True), ds.df[te].reset_index(drop=True)
    type_labels = sorted(ds.df["cell_type"].astype(str).unique())
    budget = Bm.Budget(steps=steps, eval_every=every)
    y = test_df["cell_type"].astype(str).to_numpy()
    idx = np.arange(len(test_df))
    points = []

    def observe(step, model):
        pr_ = Bm.lm_predict(model, Bm.lm_table(test_df, ds, False), idx, ["type"])["type"]
        pred = np.asarray(type_labels, object)[Bm.align_labels(pr_, model.type_labels, type_labels).argmax(1)]
        acc, f1 = Bm.accuracy_and_macro_f1(y, pred)
        points.append({"step": int(step), "accuracy": acc, "macro_f1": f1})

    t0 = time.time()
    with threadpool_limits(limits=1), torch_threads(1), tempfile.TemporaryDirectory() as wd, observe_steps(observe):
        res = Bm.train_lm(method, ds, train_df, budget, 0, wd, type_labels, patience=10 ** 9)  # the full steps
    hist = [{"step": h["step"], "val_loss": h["loss"], "val_score": selection_score(h, budget.select_by)}
            for h in res.history]
    return {"dataset": name, "fold": f, "method": method, "points": points, "validation": hist,
            "early_stop_step": early_stop_step(hist, budget.patience), "select_by": budget.select_by,
            "seconds": round(time.time() - t0, 1)}


def early_stop_step(hist: list[dict], patience: int) -> dict:
    """Where the benchmark's rule stops (``patience`` evaluations without a better validation score, the
    budget's ``select_by``: the same rule as :class:`spatial2sentence.training._Run`) and the best step it
    then keeps."""
    best, best_step, bad = -float("inf"), None, 0
    for h in hist:
        if h["val_score"] > best + 1e-6:
            best, best_step, bad = h["val_score"], h["step"], 0
        else:
            bad += 1
            if bad >= patience:
                return {"stopped_at": h["step"], "kept": best_step}
    return {"stopped_at": hist[-1]["step"] if hist else None, "kept": best_step}


def summarise(curves: list[dict]) -> dict:
    out = {}
    for name in DATASETS:
        for method in METHODS:
            cs = [c for c in curves if c["dataset"] == name and c["method"] == method]
            if not cs:
                continue
            steps = [p["step"] for p in cs[0]["points"]]
            acc = np.array([[p["accuracy"] for p in c["points"]] for c in cs])
            f1 = np.array([[p["macro_f1"] for p in c["points"]] for c in cs])
            kept = [c["early_stop_step"]["kept"] for c in cs]
            kept_acc = [next(p["accuracy"] for p in c["points"] if p["step"] == k) for c, k in zip(cs, kept)
                        if k is not None]
            out.setdefault(name, {})[method] = {
                "steps": steps, "accuracy_mean": acc.mean(0).round(4).tolist(),
                "macro_f1_mean": f1.mean(0).round(4).tolist(), "folds": len(cs),
                "early_stopping_kept_steps": kept,
                "accuracy_at_kept_steps_mean": round(float(np.mean(kept_acc)), 4) if kept_acc else None,
                "best_step_of_mean_curve": steps[int(acc.mean(0).argmax())],
            }
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(5.2 * len(summary), 4))
    for ax, (name, by) in zip(np.atleast_1d(axes), summary.items()):
        for method, r in by.items():
            line, = ax.plot(r["steps"], 100 * np.array(r["accuracy_mean"]), marker="o", ms=3, label=f"{method} accuracy")
            ax.plot(r["steps"], 100 * np.array(r["macro_f1_mean"]), ls="--", color=line.get_color(),
                    label=f"{method} macro-F1")
            ks = [k for k in r["early_stopping_kept_steps"] if k is not None]
            if ks:
                ax.axvline(float(np.mean(ks)), color=line.get_color(), ls=":", lw=1)
        ax.set_title(f"{name} (seed 0, {next(iter(by.values()))['folds']} folds)", fontsize=9)
        ax.set_xlabel("training steps (batch 32)")
        ax.set_ylabel("held-out cells, %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("learning curve (dotted: mean step kept by the benchmark's early stopping)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "learning_curve.json"))
    args = ap.parse_args(argv)
    from spatial2sentence.bench import runner as Bm

    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    jobs = []
    for name in names:
        n_folds = len(Bm.make_folds(Bm.load_builtin(name, Path(args.data_root), log=lambda *a: None), 0))
        jobs += [(name, f, m, args.steps, args.every, args.data_root) for f in range(n_folds) for m in METHODS]
    t0 = time.time()
    curves = []
    if args.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.workers) as pool:
            for c in pool.imap_unordered(one_curve, jobs):
                curves.append(c)
                print(f"{c['dataset']} fold {c['fold']} {c['method']}: {c['seconds']} s", flush=True)
    else:
        for j in jobs:
            curves.append(one_curve(j))
            print(f"{j[0]} fold {j[1]} {j[2]}: {curves[-1]['seconds']} s", flush=True)
    curves.sort(key=lambda c: (c["dataset"], c["fold"], c["method"]))
    summary = summarise(curves)
    for name, by in summary.items():
        for method, r in by.items():
            print(f"{name:20s} {method:4s} " + " ".join(f"{s}:{100 * a:.1f}" for s, a in zip(r["steps"], r["accuracy_mean"]))
                  + f" | kept steps {r['early_stopping_kept_steps']} -> {100 * (r['accuracy_at_kept_steps_mean'] or 0):.1f}")
    budget = Bm.Budget(steps=args.steps, eval_every=args.every).to_dict()
    res = {"benchmark": "learning curve: steps vs held-out accuracy (seed 0, every fold)",
           "command": "python benchmarks/learning_curve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "budget": budget, "summary": summary, "curves": curves, "seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps(res, indent=1))
    plot(summary, Path(args.out).with_suffix(".png"))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
