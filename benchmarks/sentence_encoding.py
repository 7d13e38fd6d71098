"""How much cell-type information survives the cell sentence? Ranked words vs level words.

A ranked cell sentence keeps only the order of a cell's top markers, not their values; a levels sentence
(``SentenceSettings.encoding = "levels"``) keeps every marker above a low threshold as one word
``MARKER:L`` with a per-marker level. This script measures how much of the cell type a linear model can
still read from the words, for several sentence settings side by side, with the model's own
normalisation (``spatial2sentence.normalize.Normalizer``, incl. ``fit_levels``) and sentence code
(``spatial2sentence.sentences.rank_markers`` / ``marker_levels``):

* features, ranked: one indicator per (rank position, marker) plus a bag of the sentence's markers;
  levels: the sentence's ``MARKER:L`` words read as "marker at level >= k" indicators (see
  ``level_features``; also one-hot for one setting). A marker word
  followed by a shared level word (``CD3 L7``) carries the same information as ``CD3:7`` once the words
  are read in pairs, so the linear probe cannot tell the two apart; ``MARKER:L`` is kept because it is
  one token per marker (prompts half as long) and attributions map word -> marker one to one;
* a multinomial logistic regression trained on cells of the training donors, tested on the 3 held-out
  donors of the default model (6126, 6414, 6180), i.e. split by donor;
* reference: the same regression on the full scaled marker vector (no sentence).

Data: the measured semi-synthetic cells that ``s2s train --config configs/default_model.json`` caches
(``out/damond_sim_cells.csv.gz``); and two real datasets split by image, loaded as the accuracy benchmark
loads them: the 3 Damond toy crops (5 markers; leave one crop out; normalisation fitted on the other
two) and the scimap CyCIF table (33 markers; 4 spatial strips, leave one out). Results:
``benchmarks/results/sentence_encoding.json``.

    python benchmarks/sentence_encoding.py [--cells out/damond_sim_cells.csv.gz] [--n-train 60000]

Result of ``--n-train 20000`` (2026-11-30; points against the full vector, semi-synthetic / toy crops /
CyCIF): ranked top 12 above 0.3 -3.8 / +2.8 / -12.7; levels, 16 equal bins above 0.05 -1.4 / -5.3 / -2.1;
5 equal bins above 0.1 -1.0 / -3.0 / -8.0; quantile bins worse than equal bins everywhere. Level words
close most of the gap on the 33-marker CyCIF panel and the semi-synthetic data, but none is within 1 point
on all three; on the 5-marker toy crops, whose images differ in overall intensity, the ranked words
(invariant to such shifts) read better than the full vector and better than any level words.

v2 ``values`` sentences (every marker above 0.05, each word carrying its value; features: word present
and value, standardised), same command, 2026-11-30: 0.897 / 0.804 / 0.740 against the full vector's
0.898 / 0.849 / 0.780, i.e. -0.1 / -4.5 / -4.0 points: within 1 point on the semi-synthetic data only
(without standardising: 0.897 / 0.738 / 0.719).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from spatial2sentence.normalize import Normalizer  # noqa: E402
from spatial2sentence.sentences import marker_levels, rank_markers  # noqa: E402

HELD_OUT = ["6126", "6414", "6180"]
META = {"image", "Object", "x", "y", "area", "cell_type", "donor", "stage", "nonfinite_pixels"}
SETTINGS = [  # (name, rank_by, top_k, threshold)
    ("z, top 8 above 0 (previous default)", "z", 8, 0.0),
    ("z, top 12 above 0", "z", 12, 0.0),
    ("range, top 8 above 0.1", "range", 8, 0.1),
    ("range, top 12 above 0.1 (default until 2026-11-25)", "range", 12, 0.1),
    ("range, top 16 above 0.1", "range", 16, 0.1),
    ("range, top 12 above 0.2", "range", 12, 0.2),
    ("range, top 12 above 0.3 (default)", "range", 12, 0.3),
    ("range, top 12 above 0.5", "range", 12, 0.5),
]
# levels encodings: (name, n_levels, bins, threshold); every marker above the threshold, one MARKER:L word
LEVELS = [
    ("levels: 5 equal bins above 0.1", 5, "equal", 0.1),
    ("levels: 8 equal bins above 0.05", 8, "equal", 0.05),
    ("levels: 16 equal bins above 0.05 (benchmark)", 16, "equal", 0.05),
    ("levels: 8 quantile bins above 0.05", 8, "quantile", 0.05),
    ("levels: 16 quantile bins above 0.05", 16, "quantile", 0.05),
]


def sentence_features(values: np.ndarray, top_k: int, threshold: float):
    from scipy import sparse

    order, keep = rank_markers(values, top_k, threshold)
    n, k = order.shape
    m = values.shape[1]
    rows = np.repeat(np.arange(n), k)
    w = keep.ravel().astype(np.float32)
    by_rank = sparse.csr_matrix((w, (rows, np.tile(np.arange(k), n) * m + order.ravel())), shape=(n, k * m))
    bag = sparse.csr_matrix((w, (rows, order.ravel())), shape=(n, m))
    return sparse.hstack([by_rank, bag]).tocsr()


def level_features(u: np.ndarray, edges: np.ndarray, threshold: float, ordinal: bool = True):
    """Features of the ``MARKER:L`` words of markers with ``u > threshold``. ``ordinal``: the word
    ``CD3:L`` sets the indicators "CD3 at level >= k" for k = 1..L (a fixed function of the words, so what
    it reads is in the words; it shares weight between neighbouring levels, as an LM's embeddings can);
    else one indicator per (marker, level) word (reported for 8 equal bins: it overfits the sparse level
    words of a small training set, see the results)."""
    from scipy import sparse

    n, m = u.shape
    nl = edges.shape[1] + 1
    lev = np.where(u > threshold, marker_levels(u, edges), 0)
    if ordinal:
        return sparse.csr_matrix((lev[:, :, None] >= np.arange(1, nl + 1)[None, None, :])
                                 .reshape(n, m * nl).astype(np.float32))
    rows, cols = np.nonzero(lev > 0)
    return sparse.csr_matrix((np.ones(rows.size, np.float32), (rows, cols * nl + lev[rows, cols] - 1)),
                             shape=(n, m * nl))


def value_features(u: np.ndarray, threshold: float) -> np.ndarray:
    """Features of a ``values`` sentence (v2): each marker's word present (``u > threshold``) and the value
    it carries (clipped as the model clips it, :data:`spatial2sentence.numeric.VALUE_MAX`), 0 when absent."""
    from spatial2sentence.numeric import VALUE_MAX

    on = u > threshold
    return np.hstack([on, np.where(on, np.clip(u, 0.0, VALUE_MAX), 0.0)]).astype(np.float32)


VALUES = "values: every marker above 0.05, words carrying their values (v2 default)"


def probe(train: pd.DataFrame, test: pd.DataFrame, markers: list[str]) -> dict[str, float]:
    """Accuracy of the linear read-out of the cell type: full vector and every sentence setting."""
    from sklearn.linear_model import LogisticRegression

    norm = Normalizer().fit(train[markers].to_numpy(np.float64), markers)
    z_tr = norm.transform(train[markers].to_numpy(np.float64), markers)
    z_te = norm.transform(test[markers].to_numpy(np.float64), markers)
    lo, hi = norm.range_bounds(markers)
    y_tr, y_te = train["cell_type"].to_numpy(), test["cell_type"].to_numpy()
    out = {"full": float((LogisticRegression(max_iter=1000).fit(z_tr, y_tr).predict(z_te) == y_te).mean())}
    for name, rank_by, top_k, thr in SETTINGS:
        v_tr, v_te = (z_tr, z_te) if rank_by == "z" else ((z_tr - lo) / (hi - lo), (z_te - lo) / (hi - lo))
        clf = LogisticRegression(max_iter=1000).fit(sentence_features(v_tr, top_k, thr), y_tr)
        out[name] = float((clf.predict(sentence_features(v_te, top_k, thr)) == y_te).mean())
    raw_tr = train[markers].to_numpy(np.float64)
    u_tr, u_te = (z_tr - lo) / (hi - lo), (z_te - lo) / (hi - lo)
    for name, n_levels, bins, thr in LEVELS:
        edges = norm.fit_levels(raw_tr, markers, n_levels, thr, bins).level_edges(markers, n_levels, thr)
        clf = LogisticRegression(max_iter=3000).fit(level_features(u_tr, edges, thr), y_tr)
        out[name] = float((clf.predict(level_features(u_te, edges, thr)) == y_te).mean())
        if n_levels == 8 and thr == 0.05:  # the same words read one-hot (see level_features)
            clf = LogisticRegression(max_iter=3000).fit(level_features(u_tr, edges, thr, False), y_tr)
            out[name + ", one-hot read-out"] = float((clf.predict(level_features(u_te, edges, thr, False)) == y_te).mean())
    # standardised (a fixed rescaling of what the words carry): the [0, 1.5] values against z-scored
    # full vectors would otherwise meet the regression's fixed penalty on another scale
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(value_features(u_tr, 0.05), y_tr)
    out[VALUES] = float((clf.predict(value_features(u_te, 0.05)) == y_te).mean())
    return out


def real_probes(data_root: Path) -> dict:
    """Leave one image (toy crop / CyCIF strip) out on the two real labelled datasets."""
    from spatial2sentence.bench.datasets import load_damond_toy, load_scimap

    res = {}
    for ds in (load_damond_toy(data_root), load_scimap(data_root)):
        folds = [probe(ds.df[ds.df["image"] != im], ds.df[ds.df["image"] == im], ds.markers)
                 for im in pd.unique(ds.df["image"])]
        res[ds.name] = {"cells": len(ds.df), "markers": len(ds.markers), "folds": len(folds),
                        "accuracy_mean": {k: float(np.mean([f[k] for f in folds])) for k in folds[0]},
                        "accuracy_per_fold": {k: [round(f[k], 4) for f in folds] for k in folds[0]}}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default=str(REPO / "out" / "damond_sim_cells.csv.gz"))
    ap.add_argument("--n-train", type=int, default=60000)
    ap.add_argument("--n-test", type=int, default=20000)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sentence_encoding.json"))
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args(argv)
    if not Path(args.cells).exists():
        print(f"{args.cells}: not found; run `s2s train --config configs/default_model.json` (it simulates and "
              "caches the cells) or pass --cells", file=sys.stderr)
        return 1
    df = pd.read_csv(args.cells)
    markers = [c for c in df.columns if c not in META and pd.api.types.is_numeric_dtype(df[c])]
    held = df["donor"].astype(str).isin(HELD_OUT)
    train = df[~held].sample(min(args.n_train, int((~held).sum())), random_state=0)
    test = df[held].sample(min(args.n_test, int(held.sum())), random_state=0)
    t0 = time.perf_counter()
    sim = probe(train, test, markers)
    real = real_probes(Path(args.data_root))
    names = ["full"] + [name for name, *_ in SETTINGS] + [k for k in sim if k.startswith("levels")] + [VALUES]
    print(f"{'setting':50s} {'simulated':>9s} " + " ".join(f"{k:>20s}" for k in real))
    for name in names:
        label = "full scaled marker vector (no sentence)" if name == "full" else name
        print(f"{label:50s} {sim[name]:9.4f} " + " ".join(f"{r['accuracy_mean'][name]:20.4f}" for r in real.values()))
    rows = [{"setting": name, "rank_by": rank_by, "top_k": top_k, "threshold": thr, "accuracy": sim[name],
             **{f"accuracy_{k}": r["accuracy_mean"][name] for k, r in real.items()}}
            for name, rank_by, top_k, thr in SETTINGS]
    rows += [{"setting": name, "encoding": "levels", "n_levels": nl, "level_bins": bins, "level_threshold": thr,
              "accuracy": sim[name], **{f"accuracy_{k}": r["accuracy_mean"][name] for k, r in real.items()}}
             for name, nl, bins, thr in LEVELS]
    rows += [{"setting": k, "encoding": "levels", "read_out": "one-hot", "accuracy": sim[k],
              **{f"accuracy_{d}": r["accuracy_mean"][k] for d, r in real.items()}} for k in sim if k.endswith("one-hot read-out")]
    rows += [{"setting": VALUES, "encoding": "values", "level_threshold": 0.05, "accuracy": sim[VALUES],
              **{f"accuracy_{d}": r["accuracy_mean"][VALUES] for d, r in real.items()}}]
    full = {"damond_semisynthetic": sim["full"], **{k: r["accuracy_mean"]["full"] for k, r in real.items()}}
    gaps = {name: {k: round(100 * (row["accuracy" if k == "damond_semisynthetic" else f"accuracy_{k}"] - v), 2)
                   for k, v in full.items()} for name, row in ((r["setting"], r) for r in rows)}
    ref = sim["full"]
    res = {
        "benchmark": "cell-type information in the cell sentence (linear model on ranked marker words)",
        "data": f"{args.cells}: semi-synthetic Damond cells; train donors -> held-out donors {HELD_OUT}",
        "n_train": len(train), "n_test": len(test), "markers": len(markers),
        "full_vector_logreg_accuracy": ref, "full_vector_logreg_accuracy_all": full, "settings": rows,
        "points_vs_full_vector": gaps, "real_datasets": real,
        "seconds": round(time.perf_counter() - t0, 1),
        "command": "python benchmarks/sentence_encoding.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
