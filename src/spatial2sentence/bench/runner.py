"""The accuracy benchmark's run (``s2s benchmark``): every method, several seeds, split by donor / image / block.

Datasets are :class:`~spatial2sentence.bench.datasets.Dataset` tables. Splits are never random cells:

* ``donor`` (or ``--group-col``) given: leave-groups-out cross-validation; with a clinical task the
  folds are stratified so that every stage is in every training and test fold (4 donors per stage:
  4 folds, each testing one donor per stage). The donor order within each stage is shuffled by seed.
* else by image (the same, with images as groups);
* a single image is first cut into 4 vertical strips of equal cell counts (each strip becomes an
  "image"; neighbours and partners never cross strips), then split by strip (leave one strip out).

A task is only benchmarked when every test fold's labels occur in its training folds (e.g. the three
toy images have one stage each: clinical status cannot be learned by leaving one image out).

Each (seed, fold) is one job (:func:`fold_job`): every method (:mod:`.methods`) trained on the fold's
training rows and evaluated on its test cells. The jobs run in a pool of spawned worker processes
(``Budget.workers``), or here with one worker. The reports are written by :mod:`.report`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits

from ..cellset import prepare_cells
from ..errors import S2SInputError
from ..predict import PREDICT_BATCH_SIZE, predict_cellset, tissue_status
from ..threads import torch_threads
from ..training import selection_score, train
from .baselines import FeatureMaker, composition, features_for, fit_predict_proba, image_vote
from .datasets import Dataset, load_builtin
from .methods import (ALL_METHODS, CLASSICAL_METHODS, LM_METHODS, SELECTED_METHODS, TASKS, Budget, lm_settings,
                      val_rule)
from .report import write_results


# --------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------
def group_of(ds: Dataset) -> np.ndarray:
    return (ds.df["donor"] if "donor" in ds.df.columns else ds.df["image"]).astype(str).to_numpy()


def make_folds(ds: Dataset, seed: int, max_folds: int = 4) -> list[np.ndarray]:
    """Test groups of each fold (list of arrays of group ids)."""
    groups = group_of(ds)
    uniq = list(pd.unique(groups))
    rng = np.random.default_rng(seed)
    if ds.clinical:
        st = pd.Series(ds.df["stage"].to_numpy(), index=groups).groupby(level=0).first()
        strata = {s: sorted(st.index[st == s]) for s in sorted(st.unique())}
        n_folds = min(max_folds, min(len(v) for v in strata.values()))
        if n_folds >= 2:
            folds = [[] for _ in range(n_folds)]
            for s, gs in strata.items():
                gs = list(rng.permutation(gs))
                for i, g in enumerate(gs):
                    folds[i % n_folds].append(g)
            return [np.array(f, dtype=object) for f in folds]
        ds.clinical = False
        ds.notes.append("clinical status not benchmarked: some stage has a single group, so leaving groups "
                        "out would test stages never seen in training")
    n_folds = min(max_folds, len(uniq))
    if n_folds < 2:
        raise S2SInputError(ds.name, "fewer than 2 groups/images/strips to split")
    perm = sorted(uniq) if len(uniq) <= max_folds else list(rng.permutation(sorted(uniq)))
    return [np.array(perm[i::n_folds], dtype=object) for i in range(n_folds)]


def sample_train_images(df: pd.DataFrame, groups: np.ndarray, cap: int, rng) -> np.ndarray:
    """Training rows: whole images, round-robin over groups in seeded order, up to ``cap`` cells."""
    if len(df) <= cap:
        return np.ones(len(df), bool)
    img = df["image"].astype(str).to_numpy()
    sizes = pd.Series(img).value_counts()
    by_group = {}
    for g in rng.permutation(sorted(set(groups))):
        ims = sorted(set(img[groups == g]))
        by_group[g] = list(rng.permutation(ims))
    chosen, total = [], 0
    while total < cap and any(by_group.values()):
        for g in list(by_group):
            if by_group[g] and total < cap:
                im = by_group[g].pop(0)
                chosen.append(im)
                total += int(sizes[im])
    return np.isin(img, chosen)


def sample_test_cells(df: pd.DataFrame, per_image: int, rng) -> np.ndarray:
    """Row positions of the evaluated test cells: all, or ``per_image`` per image (seeded, even)."""
    if not per_image:
        return np.arange(len(df))
    img = df["image"].astype(str).to_numpy()
    out = []
    for im in pd.unique(img):
        sel = np.flatnonzero(img == im)
        out.append(np.sort(rng.choice(sel, min(per_image, sel.size), replace=False)))
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------------
# language models
# --------------------------------------------------------------------------------------------------
def lm_table(df: pd.DataFrame, ds: Dataset, with_labels: bool) -> pd.DataFrame:
    """The columns of ``ds``'s rows ``df`` that a language model trains on (``with_labels``) or reads."""
    cols = ["image", "Object", "x", "y", *ds.markers]
    if ds.phenotype_only:
        cols.append("cell_type")  # the input phenotype
    elif with_labels and ds.cell_type:
        cols.append("cell_type")
    if with_labels and ds.clinical:
        cols.append("stage")
    return df[cols].reset_index(drop=True)


def _probability_columns(model, task: str) -> list[str]:
    """The columns of :func:`predict_cellset`'s cell table holding ``task``'s class probabilities."""
    prefix, labels = ("p_", model.type_labels) if task == "type" else ("p_status_", model.status_labels)
    return [prefix + str(label).replace(" ", "_") for label in labels]


def lm_predict(model, test_df: pd.DataFrame, idx: np.ndarray, tasks, batch_size: int | None = None,
               threads: int | None = None) -> dict:
    """Probabilities of each task's labels (the model's order) for the test cells ``idx``, scored by
    :func:`~spatial2sentence.predict.predict_cellset` with partners and neighbourhoods from the whole
    image; a model with tissue prompts gives every cell its image's status read from the whole image's
    tissue prompt. ``threads``: batches scored at once, as in ``predict_cellset``."""
    cs = prepare_cells(test_df, model.markers, model.normalizer, source="test cells")
    cs.build_pairs(model.pair_settings)
    cells = predict_cellset(model, cs, batch_size=batch_size or PREDICT_BATCH_SIZE, tasks=tuple(tasks),
                            threads=threads, cells=idx).cells
    out = {t: cells[_probability_columns(model, t)].to_numpy(np.float32) for t in tasks}
    if "status" in tasks and model.prompt.tissue:  # every cell of an image: its tissue prompt's status
        tissue = tissue_status(model, cs, threads=threads)
        out["status"] = np.stack([tissue[im] for im in cs.image[idx]]).astype(np.float32)
    return out


def run_lm(method, ds, train_df, test_df, test_idx, budget, seed, type_labels, status_labels, workdir,
           trained: dict | None = None):
    """Train language-model ``method`` on ``train_df`` and predict the test cells ``test_idx``: the
    probabilities per task (in the given label order) and (trainings, choice). ``trainings``: (seconds,
    steps done, best step) of each training this call ran; ``choice``: for a :data:`SELECTED_METHODS`
    entry "METHOD: CANDIDATE KEPT", else None.

    ``trained`` (method -> what :func:`_train_and_predict` returned), shared by the calls of one fold and
    seed: a method is trained once per fold, so a selecting method reuses a candidate that the same
    benchmark already trained there (same data, seed and settings) instead of training it again."""
    trained = {} if trained is None else trained
    ran = []

    def once(m, wd):
        if m not in trained:
            trained[m] = _train_and_predict(m, ds, train_df, test_df, test_idx, budget, seed, type_labels,
                                            status_labels, wd)
            ran.append(trained[m][1])
        return trained[m]

    if method not in SELECTED_METHODS:
        out = once(method, workdir)[0]
        return out, (ran, None)
    runs = [(m, *once(m, Path(workdir) / m)) for m in SELECTED_METHODS[method]]
    kept, out, _stats, _score = max(runs, key=lambda r: r[3])  # ties: the first candidate
    return out, (ran, f"{method}: {kept}")


def train_lm(method: str, ds: Dataset, train_df: pd.DataFrame, budget: Budget, seed: int, workdir,
             type_labels=None, status_labels=None, **train_changes):
    """Train language-model ``method`` on the training rows ``train_df`` of ``ds`` exactly as the
    benchmark does (:func:`~.methods.lm_settings`, validation images by :func:`~.methods.val_rule`,
    on the CPU, quiet): the :class:`~spatial2sentence.training.TrainResult`. ``train_changes``: fields of
    the training settings set after the budget's (probes, e.g. ``patience``); the benchmark passes none.
    Threads: the caller's (the benchmark's fold jobs limit them to ``budget.threads``)."""
    s, p, pr, ms, ts = lm_settings(method, budget, seed)
    ts = replace(ts, val_split=val_rule(train_df), **train_changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(lm_table(train_df, ds, True), workdir, sentence=s, pairs=p, prompt=pr, model_settings=ms,
                     train_settings=ts, type_labels=type_labels or None, status_labels=status_labels or None,
                     progress_bar=False, device="cpu", log=lambda *a, **k: None)


def _train_and_predict(method, ds, train_df, test_df, test_idx, budget, seed, type_labels, status_labels,
                       workdir):
    """:func:`run_lm` of one method, with the kept state's validation score (``selection_score``)."""
    res = train_lm(method, ds, train_df, budget, seed, workdir, type_labels, status_labels)
    tasks = (["type"] if ds.cell_type else []) + (["status"] if ds.clinical else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probs = lm_predict(res.model, lm_table(test_df, ds, False), test_idx, tasks, threads=budget.threads)
    out = {}
    if "type" in probs:
        out["cell_type"] = align_labels(probs["type"], res.model.type_labels, type_labels)
    if "status" in probs:
        out["clinical"] = align_labels(probs["status"], res.model.status_labels, status_labels)
    score = selection_score(res.best or {}, budget.select_by)  # the training's select_by (lm_settings)
    return out, (res.seconds, res.steps_done, (res.best or {}).get("step", res.steps_done)), score


def align_labels(p, have, want) -> np.ndarray:
    """Probability columns ``p`` in label order ``have`` rearranged to the order ``want`` (a label the
    model never saw: probability 0)."""
    out = np.zeros((len(p), len(want)))
    pos = {c: j for j, c in enumerate(have)}
    for j, c in enumerate(want):
        if c in pos:
            out[:, j] = p[:, pos[c]]
    return out


# --------------------------------------------------------------------------------------------------
# one fold: every method
# --------------------------------------------------------------------------------------------------
def accuracy_and_macro_f1(y_true, y_pred) -> tuple[float, float]:
    y_true, y_pred = np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str)
    acc = float((y_true == y_pred).mean())
    f1 = float(f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0))
    return acc, f1


@dataclass
class FoldContext:
    """What every fold job of one dataset shares (sent once to each pool worker, not with every job)."""

    ds: Dataset
    budget: Budget
    methods: list[str]
    type_labels: list[str]
    status_labels: list[str]
    tmpdir: str  # the LM trainings' working folders go here


# The fold context of a pool worker process: set once per spawned worker by _init_worker, so that the
# dataset is pickled once per worker rather than once per job; read by _pool_job. Never set in the
# process that runs the benchmark (its serial path passes the context to fold_job).
_WORKER_CTX: FoldContext | None = None


def budget_workers(budget: Budget) -> int:
    return max(1, int(getattr(budget, "workers", 1) or 1))


def _init_worker(ctx: FoldContext) -> None:
    """Pool initializer, run in each spawned worker process (which lives only for the pool): its fold
    context, and no warnings printed from the worker (the trainings warn per fold)."""
    global _WORKER_CTX
    _WORKER_CTX = ctx
    warnings.simplefilter("ignore")


def _pool_job(job):
    return fold_job(job, _WORKER_CTX)


def fold_job(job, ctx: FoldContext):
    """One (seed, fold): every method trained on the training rows and evaluated on the test cells, with
    torch and BLAS limited to ``budget.threads`` threads (both restored afterwards)."""
    n = max(1, ctx.budget.threads)
    with threadpool_limits(limits=n), torch_threads(n):
        return _fold_job(job, ctx)


def _fold_job(job, ctx: FoldContext):
    seed, f, nf, tr, te, idx = job
    df = ctx.ds.df
    train_df, test_df = df[tr].reset_index(drop=True), df[te].reset_index(drop=True)
    preds = _classical_predictions(ctx, train_df, test_df, idx, seed)
    secs, trained = [], {}
    for m in [m for m in ctx.methods if m in LM_METHODS]:
        wd = Path(ctx.tmpdir) / f"{m}_s{seed}_f{f}"
        preds[m], s = run_lm(m, ctx.ds, train_df, test_df, idx, ctx.budget, seed, ctx.type_labels,
                             ctx.status_labels, wd, trained)
        secs.append(s)
        shutil.rmtree(wd, ignore_errors=True)
    return seed, f, nf, _records(ctx.ds, test_df, idx, preds, ctx.type_labels, ctx.status_labels), secs, \
        len(idx), int(test_df["image"].nunique())


def _classical_predictions(ctx: FoldContext, train_df, test_df, idx, seed) -> dict:
    """method -> {"cell_type" / "clinical": probabilities of the test cells ``idx``} of the classical methods."""
    ds, budget = ctx.ds, ctx.budget
    cm = [m for m in ctx.methods if m in CLASSICAL_METHODS]
    if not cm and "composition_logreg" not in ctx.methods:
        return {}
    fm = FeatureMaker(ds.markers, "cell_type" if ds.phenotype_only else None, k=budget.k_neighbors).fit(train_df)
    own_tr, nb_tr = fm.transform(train_df)
    own_te, nb_te = fm.transform(test_df)
    preds = {}
    for m in cm:
        Xtr, Xte = features_for(m, own_tr, nb_tr), features_for(m, own_te, nb_te)[idx]
        preds[m] = {}
        if ds.cell_type:
            preds[m]["cell_type"] = fit_predict_proba(m, Xtr, train_df["cell_type"], Xte, ctx.type_labels,
                                                      seed, budget.classical_max_train)
        if ds.clinical:
            preds[m]["clinical"] = fit_predict_proba(m, Xtr, train_df["stage"], Xte, ctx.status_labels,
                                                     seed, budget.classical_max_train)
    if "composition_logreg" in ctx.methods:
        preds["composition_logreg"] = _composition_prediction(ctx, train_df, test_df, idx, seed,
                                                              (own_tr, nb_tr, own_te, nb_te))
    return preds


def _composition_prediction(ctx: FoldContext, train_df, test_df, idx, seed, features) -> dict:
    """``composition_logreg``: each image's status from its cell-type composition; the test images' types
    are predicted by logreg_neighbors (labels are not inputs), unless the types are the input phenotypes."""
    own_tr, nb_tr, own_te, nb_te = features
    classes = ctx.type_labels
    tr_types = train_df["cell_type"].astype(str).to_numpy()
    if ctx.ds.phenotype_only:
        te_types = test_df["cell_type"].astype(str).to_numpy()
    else:
        p = fit_predict_proba("logreg_neighbors", np.hstack([own_tr, nb_tr]), tr_types,
                              np.hstack([own_te, nb_te]), classes, seed, ctx.budget.classical_max_train)
        te_types = np.asarray(classes, dtype=object)[p.argmax(1)]
    ims_tr, C_tr = composition(tr_types, train_df["image"].astype(str).to_numpy(), classes)
    st_tr = train_df.groupby("image")["stage"].first().astype(str)
    ims_te, C_te = composition(te_types, test_df["image"].astype(str).to_numpy(), classes)
    p_img = fit_predict_proba("composition_logreg", C_tr, st_tr.loc[ims_tr].to_numpy(), C_te,
                              ctx.status_labels, seed)
    row = {im: r for r, im in enumerate(ims_te)}
    timg = test_df["image"].astype(str).to_numpy()[idx]
    return {"clinical": p_img[[row[i] for i in timg]]}


def _records(ds: Dataset, test_df, idx, preds: dict, type_labels, status_labels) -> list[tuple]:
    """(task, method, truth, calls) of every method's predictions on one fold."""
    timg = test_df["image"].astype(str).to_numpy()[idx]
    y_type = test_df["cell_type"].astype(str).to_numpy()[idx] if ds.cell_type else None
    y_stat = test_df["stage"].astype(str).to_numpy()[idx] if ds.clinical else None
    img_truth = test_df.groupby("image")["stage"].first().astype(str).to_dict() if ds.clinical else {}
    records = []
    for m, pm in preds.items():
        if "cell_type" in pm:
            yp = np.asarray(type_labels, dtype=object)[pm["cell_type"].argmax(1)]
            records.append(("cell_type", m, list(y_type), list(yp)))
        if "clinical" in pm:
            pc = pm["clinical"]
            yp = np.asarray(status_labels, dtype=object)[pc.argmax(1)]
            records.append(("clinical_status_cells", m, list(y_stat), list(yp)))
            vote = image_vote(pc, timg)
            ims = list(vote)
            records.append(("clinical_status", m, [img_truth[i] for i in ims], [status_labels[vote[i]] for i in ims]))
    return records


# --------------------------------------------------------------------------------------------------
# one dataset: every seed and fold
# --------------------------------------------------------------------------------------------------
def _methods_for(ds: Dataset, methods) -> list[str]:
    """The methods run on ``ds`` (after :func:`make_folds`, which may turn its clinical task off)."""
    methods = [m for m in ALL_METHODS if m in methods]
    if not ds.clinical or not (ds.cell_type or ds.phenotype_only):
        methods = [m for m in methods if m != "composition_logreg"]  # needs clinical labels and cell types
    # ablations that change nothing on this dataset would only repeat s2s: no clinical task -> no tissue
    # prompts; phenotype-only cells -> no marker words (so no levels or values to take away)
    same_as_s2s = (["s2s_no_tissue"] if not ds.clinical else []) + \
        (["s2s_ranked", "s2s_no_values", "s2s_select"] if ds.phenotype_only else [])
    methods = [m for m in methods if m not in same_as_s2s]
    if not ds.cell_type and not ds.clinical:
        raise S2SInputError(ds.name, "no task left to benchmark")
    return methods


def _fold_jobs(ds: Dataset, budget: Budget, per_image: int) -> list[tuple]:
    """(seed, fold, n_folds, training rows, test rows, evaluated test cells) of every seed and fold."""
    df = ds.df
    groups = group_of(ds)
    jobs = []
    for seed in range(budget.seeds):
        rng = np.random.default_rng(1000 + seed)
        folds = make_folds(ds, seed)
        for f, test_groups in enumerate(folds):
            te = np.isin(groups, test_groups)
            tr_all = ~te
            tr = np.zeros(len(df), bool)
            tr[np.flatnonzero(tr_all)[sample_train_images(df[tr_all], groups[tr_all], budget.max_train_cells, rng)]] = True
            idx = sample_test_cells(df[te].reset_index(drop=True), per_image, rng)
            jobs.append((seed, f, len(folds), tr, te, idx))
    return jobs


def _test_cells_per_image(ds: Dataset, budget: Budget) -> int:
    """Evaluated test cells per image: the budget's when set, else the dataset's (0: all)."""
    return budget.test_cells_per_image if budget.test_cells_per_image is not None else (ds.test_cells_per_image or 0)


def fold_splits(ds: Dataset, budget: Budget) -> Iterator[tuple]:
    """The benchmark's (seed, fold, n_folds, training rows, test rows, evaluated test cells) of every seed
    and fold, the rows as tables (for probes that train and read the benchmark's way, :func:`train_lm`)."""
    for seed, f, nf, tr, te, idx in _fold_jobs(ds, budget, _test_cells_per_image(ds, budget)):
        yield seed, f, nf, ds.df[tr].reset_index(drop=True), ds.df[te].reset_index(drop=True), idx


def _run_jobs(jobs: list[tuple], ctx: FoldContext) -> Iterator[tuple]:
    """The fold jobs' results as they finish: in a pool of ``Budget.workers`` processes, else here."""
    workers = min(budget_workers(ctx.budget), len(jobs))
    if workers > 1:
        # spawn (not fork): no OpenMP / torch thread pools inherited from this process
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(ctx,)) as pool:
            yield from pool.imap_unordered(_pool_job, jobs)
    else:
        for job in jobs:
            yield fold_job(job, ctx)


class _Tally:
    """The fold results of one dataset, pooled per seed (each evaluated cell / image once per seed)."""

    def __init__(self, methods: list[str], seeds: int):
        self.methods, self.seeds = methods, seeds
        self.pooled = {s: {t: {m: ([], []) for m in methods} for t in TASKS} for s in range(seeds)}
        self.confusion = {m: ([], []) for m in methods}  # cell type (truth, call), pooled over seeds
        self.lm_runs: list[tuple] = []  # (trainings, choice) of every LM run (see run_lm)
        self.n_cells = {s: 0 for s in range(seeds)}
        self.n_images = {s: 0 for s in range(seeds)}

    def add(self, result: tuple) -> None:
        seed, _f, _nf, records, secs, nc, ni = result
        for t, m, yt, yp in records:
            self.pooled[seed][t][m][0].extend(yt)
            self.pooled[seed][t][m][1].extend(yp)
            if t == "cell_type":
                self.confusion[m][0].extend(yt)
                self.confusion[m][1].extend(yp)
        self.lm_runs.extend(secs)
        self.n_cells[seed] += nc
        self.n_images[seed] += ni

    def metrics(self) -> dict:
        """task -> method -> accuracy and macro F1, mean and sd over seeds, with the test counts of seed 0."""
        result = {}
        for t in TASKS:
            for m in self.methods:
                runs = [accuracy_and_macro_f1(*self.pooled[s][t][m]) for s in range(self.seeds) if self.pooled[s][t][m][0]]
                if not runs:
                    continue
                a = np.array([r[0] for r in runs])
                f1 = np.array([r[1] for r in runs])
                sd = (lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0)
                result.setdefault(t, {})[m] = {
                    "accuracy_mean": float(a.mean()), "accuracy_sd": sd(a),
                    "macro_f1_mean": float(f1.mean()), "macro_f1_sd": sd(f1),
                    "n_test_cells": int(self.n_cells[0]), "n_test_images": int(self.n_images[0]),
                    "n_seeds": len(runs),
                }
        return result

    def lm_meta(self) -> dict:
        trainings = [t for ran, _choice in self.lm_runs for t in ran]
        seconds, steps, best = ([t[i] for t in trainings] for i in range(3))
        return {
            "lm_train_seconds_mean": round(float(np.mean(seconds)), 2) if seconds else None,
            "n_lm_trainings": len(trainings),
            "lm_steps_mean": round(float(np.mean(steps)), 1) if steps else None,
            "lm_steps_range": [int(min(steps)), int(max(steps))] if steps else None,
            "lm_best_step_mean": round(float(np.mean(best)), 1) if best else None,
            # how often a selecting method kept each candidate over seeds and folds ("s2s_select: s2s_ranked")
            "lm_selected": dict(sorted(Counter(c for _ran, c in self.lm_runs if c).items())),
        }


def run_dataset(ds: Dataset, budget: Budget, methods=ALL_METHODS, log=print, workdir: str | None = None) -> dict:
    """Train and evaluate every method on every fold and seed; returns the per-dataset result dict."""
    t_start = time.time()
    df = ds.df
    folds0 = make_folds(ds, 0)  # decides whether clinical status can be benchmarked
    methods = _methods_for(ds, methods)
    type_labels = sorted(df["cell_type"].astype(str).unique()) if (ds.cell_type or ds.phenotype_only) else []
    status_labels = sorted(df["stage"].astype(str).unique()) if ds.clinical else []
    per_image = _test_cells_per_image(ds, budget)
    log(f"[{ds.name}] {len(df)} cells, {df['image'].nunique()} images, markers {len(ds.markers)}"
        f"{' (phenotype-only)' if ds.phenotype_only else ''}; tasks: "
        f"{'cell type ' if ds.cell_type else ''}{'clinical status' if ds.clinical else ''}; "
        f"{len(folds0)} folds x {budget.seeds} seeds")
    tally = _Tally(methods, budget.seeds)
    with tempfile.TemporaryDirectory(prefix="s2s_bench_", dir=workdir) as tmp:
        ctx = FoldContext(ds, budget, methods, type_labels, status_labels, tmp)
        for r in _run_jobs(_fold_jobs(ds, budget, per_image), ctx):
            tally.add(r)
            seed, f, nf, _, _, nc, ni = r
            log(f"[{ds.name}] seed {seed} fold {f + 1}/{nf} done: {nc} test cells in {ni} images; "
                f"{time.time() - t_start:.0f} s")
    result = tally.metrics()
    result["_meta"] = {
        "dataset": ds.name, "description": ds.description, "split": ds.split or "by group/image",
        "n_cells": int(len(df)), "n_images": int(df["image"].nunique()), "markers": ds.markers,
        "phenotype_only": ds.phenotype_only, "n_folds": len(folds0),
        "test_cells_per_image": int(per_image or 0), "cell_type_labels": type_labels if ds.cell_type else [],
        "status_labels": status_labels, "notes": ds.notes, "wall_s": round(time.time() - t_start, 1),
        **tally.lm_meta(),
    }
    result["_confusion"] = {m: v for m, v in tally.confusion.items() if v[0]}
    return result


def run_benchmark(datasets: list[Dataset] | list[str], out: str | Path, budget: Budget | None = None,
                  methods=ALL_METHODS, data_root: str | Path | None = None, sim_cells: str | None = None,
                  command: str = "", log=print, merge: list[str | Path] | tuple = ()) -> dict:
    """Benchmark ``datasets`` (:class:`Dataset` objects, or names of built-in datasets read from the folder
    ``data_root``, which they need) and write ``accuracy.json`` / ``accuracy.md`` to ``out`` after each."""
    budget = budget or Budget()
    if data_root is None and not all(isinstance(d, Dataset) for d in datasets):
        raise S2SInputError(None, "built-in datasets need data_root, the folder they are in")
    t0 = time.time()
    log("budget: " + json.dumps(budget.to_dict()))
    results = {}
    single = len(datasets) == 1 and isinstance(datasets[0], Dataset)
    for d in datasets:
        ds = d if isinstance(d, Dataset) else load_builtin(d, Path(data_root), sim_cells, log=log)
        results[ds.name] = run_dataset(ds, budget, methods, log=log)
        # partial results are written after each dataset
        write_results(Path(out), results, budget, command, time.time() - t0, single, merge, log=lambda *a: None)
    wall = time.time() - t0
    write_results(Path(out), results, budget, command, wall, single, merge, log=log)
    log(f"done in {wall / 60:.1f} min; results in {out}/accuracy.json and accuracy.md")
    return results
