"""Accuracy benchmark (``s2s benchmark``): every method, several seeds, split by donor / image / block.

Datasets are cells tables with standard columns (``image, Object, x, y``, markers, and optionally
``cell_type`` = the cell-type label, ``phenotype`` = an input phenotype for phenotype-only data,
``stage`` = clinical status, ``donor`` = the group that splits). Splits are never random cells:

* ``donor`` (or ``--group-col``) given: leave-groups-out cross-validation; with a clinical task the
  folds are stratified so that every stage is in every training and test fold (4 donors per stage:
  4 folds, each testing one donor per stage). The donor order within each stage is shuffled by seed.
* else by image (the same, with images as groups);
* a single image is first cut into 4 vertical strips of equal cell counts (each strip becomes an
  "image"; neighbours and partners never cross strips), then split by strip (leave one strip out).

A task is only benchmarked when every test fold's labels occur in its training folds (e.g. the three
toy images have one stage each: clinical status cannot be learned by leaving one image out).

Methods: the language models ``s2s`` (v2 Spatial2Sentence: level words carrying their values, anchor +
positive and negative partners + an ``around`` neighbourhood line, tissue prompts for the image's status,
cell type + clinical status + auxiliary pair task + tissue task), ``c2s`` (single-cell prompts, same
sentences, model and budget, no pair or tissue task, image status = the mean of its cells' calls), the
ablations ``s2s_ranked`` (levels off: v1 ranked words, no values), ``s2s_no_values`` (level words without
values), ``s2s_no_neighbourhood`` (no ``around`` line), ``s2s_no_tissue`` (image-level status off: the
mean of the cells' calls), ``s2s_no_negatives`` (``n_neg=0``), ``s2s_no_positives`` (``n_pos=0``),
``s2s_no_aux`` (no pair task, its share of the steps goes to the other tasks), all trained with
:func:`spatial2sentence.training.train` under one :class:`Budget`; and the classical baselines of
:mod:`spatial2sentence.baselines`.

Metrics per seed are pooled over the folds (each evaluated cell / image is tested once per seed), then
reported as mean and sd over seeds: accuracy and macro F1 (over the classes present in the truth).
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .bench import baselines as B

LM_METHODS = ("s2s", "c2s", "s2s_ranked", "s2s_no_values", "s2s_no_neighbourhood", "s2s_no_tissue",
              "s2s_no_negatives", "s2s_no_positives", "s2s_no_aux")
CLASSICAL_METHODS = ("logreg", "logreg_neighbors", "hgb_neighbors")
ALL_METHODS = LM_METHODS + CLASSICAL_METHODS + ("composition_logreg",)
TASKS = ("cell_type", "clinical_status", "clinical_status_cells")
BUILTIN = ("damond_pancreas_toy", "scimap_cycif", "damond_diabetes_layouts", "damond_semisynthetic")
PAPER_MARGIN = {"cell_type": 5.98, "clinical_status": 4.18}


@dataclass
class Budget:
    """The training budget: the same for every language model (our choice; printed and saved)."""

    # at most this many optimiser steps per language model and fold; early stopping on validation cells
    # from the training groups decides (v1: a fixed 800 steps, no validation, under-trained)
    steps: int = 2000
    batch_size: int = 32  # prompts per step (so steps x batch_size training prompts per model)
    lr: float = 3e-3
    warmup_steps: int = 50
    val_fraction: float = 0.2  # validation share of the training groups (never test cells)
    eval_every: int = 100  # validation every this many steps
    eval_prompts: int = 600  # fixed validation prompts
    # evaluations without a better validation score before stopping (best state kept); 8: on one CyCIF
    # fold validation accuracy still rose at step 1500 while patience 4 stopped runs at 800
    patience: int = 8
    # type sampling weight ~ count(type) ** -class_balance; 0 (plain sampling): one CyCIF fold read 67.4%
    # at 0 against 62.4% at 0.5 (same macro-F1 within noise)
    class_balance: float = 0.0
    # cell sentences of s2s / c2s / ablations: "values" (v2: bare words carrying values), "levels",
    # "ranked" (v1); s2s_ranked always uses v1 ranked words
    encoding: str = "values"
    n_levels: int = 16
    level_bins: str = "equal"
    partner_words: int = 3  # partner lines keep their 3 highest words (the anchor all; see SentenceSettings)
    values: bool = True  # marker words carry their measured value into the embedding (spatial2sentence.numeric)
    select_by: str = "accuracy"  # early stopping and the kept state: validation accuracy of the main task
    neighbourhood_k: int = 10  # s2s prompts end with an "around" line: the mean of the 10 nearest cells
    neighbourhood_words: int = 6  # ... its 6 highest markers (phenotypes)
    tissue: bool = True  # s2s reads an image's clinical status from tissue prompts (spatial2sentence.tissue)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    threads: int = 1  # torch CPU threads (1: several threads thrash on a shared 2-core machine)
    max_train_cells: int = 40000  # training images are sampled (seeded, round-robin over donors) up to this
    classical_max_train: int = 20000  # classical methods fit on at most this many of those cells
    k_neighbors: int = 10  # neighbourhood size of the *_neighbors baselines
    test_cells_per_image: int | None = None  # None: the dataset's default (all; 50 for the large built-ins); 0: all
    seeds: int = 3
    workers: int = 2  # processes running folds in parallel (each with `threads` torch threads)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Dataset:
    name: str
    df: pd.DataFrame
    markers: list[str]
    description: str
    phenotype_only: bool = False
    cell_type: bool = True
    clinical: bool = False
    test_cells_per_image: int | None = None  # overrides Budget.test_cells_per_image
    notes: list[str] = field(default_factory=list)
    split: str = ""


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------
def _drop_dna_bg(cols) -> list[str]:
    return [c for c in cols if not (str(c).upper().startswith("DNA") or str(c).upper().startswith("BG"))]


def _canonical_markers(df: pd.DataFrame, cols: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Rename marker columns to canonical names (dropping later duplicates) so the LM and the
    baselines see the same panel."""
    from .aliases import canonical_marker

    ren, seen = {}, set()
    for c in cols:
        k = canonical_marker(c)
        if k in seen:
            continue
        seen.add(k)
        ren[c] = k
    out = df[list(ren)].rename(columns=ren).astype(np.float64)
    return out, list(ren.values())


def split_into_strips(df: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """Cut each image into ``n`` vertical strips of equal cell counts; the strip becomes the image."""
    df = df.copy()
    parts = []
    for im, sub in df.groupby("image", sort=False):
        q = np.quantile(sub["x"].to_numpy(), np.linspace(0, 1, n + 1)[1:-1])
        strip = np.searchsorted(q, sub["x"].to_numpy(), side="right")
        parts.append(pd.Series([f"{im}|strip{s + 1}" for s in strip], index=sub.index))
    df["image"] = pd.concat(parts).loc[df.index]
    return df


def standard_table(df: pd.DataFrame, image_col=None, x_col="x", y_col="y", markers=None, phenotype_col=None,
                   label_col=None, clinical_col=None, group_col=None, object_col=None, name="table",
                   drop_dna_bg=False) -> Dataset:
    """Any cells table -> :class:`Dataset` with standard columns (see module doc)."""
    from .cellset import NON_MARKER
    from .errors import S2SInputError

    for c in (image_col, x_col, y_col, phenotype_col, label_col, clinical_col, group_col, object_col):
        if c is not None and c not in df.columns:
            raise S2SInputError(name, f"no column {c!r} (columns: {', '.join(map(str, df.columns[:30]))})")
    if label_col is None and clinical_col is None:
        raise S2SInputError(name, "nothing to predict: give --label-col (cell type) and/or --clinical-col")
    named = {c for c in (image_col, x_col, y_col, phenotype_col, label_col, clinical_col, group_col, object_col) if c}
    if markers is None:
        if phenotype_col is not None:
            markers = []
        else:
            markers = [c for c in df.columns if c not in named and str(c).lower() not in NON_MARKER
                       and pd.api.types.is_numeric_dtype(df[c])]
            if drop_dna_bg:
                markers = _drop_dna_bg(markers)
    else:
        missing = [m for m in markers if m not in df.columns]
        if missing:
            raise S2SInputError(name, f"marker columns not in the table: {missing}")
    if not markers and phenotype_col is None:
        raise S2SInputError(name, "no marker columns and no --phenotype-col")
    out = pd.DataFrame({
        "image": df[image_col].astype(str).to_numpy() if image_col else np.full(len(df), "image", object),
        "Object": df[object_col].to_numpy() if object_col else np.arange(1, len(df) + 1),
        "x": df[x_col].to_numpy(np.float64), "y": df[y_col].to_numpy(np.float64),
    })
    notes = []
    if markers:
        mdf, canon = _canonical_markers(df, list(markers))
        mdf.index = out.index
        out = pd.concat([out, mdf], axis=1)
    else:
        canon = []
    phen = False
    if not canon:
        out["cell_type"] = df[phenotype_col].astype(str).to_numpy()  # the phenotype is the input
        phen = True
        if label_col is not None and label_col != phenotype_col:
            notes.append("phenotype-only table: the cell-type task is not run (the phenotype is the input)")
        label_col = None
    elif label_col is not None:
        out["cell_type"] = df[label_col].astype(str).to_numpy()
    if clinical_col is not None:
        out["stage"] = df[clinical_col].astype(str).to_numpy()
    if group_col is not None:
        out["donor"] = df[group_col].astype(str).to_numpy()
    ok = np.isfinite(out[["x", "y"]].to_numpy()).all(1)
    if canon:
        ok &= np.isfinite(out[canon].to_numpy()).all(1)
    for c in ("cell_type", "stage"):
        if c in out.columns:
            ok &= ~df[{"cell_type": label_col or phenotype_col, "stage": clinical_col}[c]].isna().to_numpy()
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} rows with missing positions, markers or labels dropped")
        out = out.loc[ok].reset_index(drop=True)
    split = "by group (" + group_col + ")" if group_col else "by image"
    if out["image"].nunique() == 1:
        out = split_into_strips(out, 4)
        split = "one image: 4 vertical strips of equal cell counts, leave one strip out"
    return Dataset(name, out, canon, description=name, phenotype_only=phen,
                   cell_type=label_col is not None and not phen, clinical=clinical_col is not None,
                   notes=notes, split=split)


def load_damond_toy(root: Path) -> Dataset:
    from .tables import load_table

    folder = root / "damond_pancreas_toy"
    df = load_table(folder, progress=False)
    markers = [c for c in df.columns if c not in ("image", "Object", "x", "y", "area", "cell_type", "donor",
                                                  "stage", "nonfinite_pixels")
               and pd.api.types.is_numeric_dtype(df[c])]
    ds = standard_table(df, "image", "x", "y", markers, None, "cell_type", "stage", None, "Object",
                        name="damond_pancreas_toy")
    ds.description = ("3 real IMC images of human pancreas (Damond et al. 2019, 100x100 um crops), measured "
                      "here from images + masks (5 markers: H3, CD99, PIN, CD8a, CDH); cell type beta / alpha / "
                      "other; leave one image out")
    ds.split = "leave one image out (3 folds)"
    return ds


def load_scimap(root: Path) -> Dataset:
    import anndata as ad

    from .errors import S2SInputError

    folder = root / "scimap_cycif"
    raw = pd.read_csv(folder / "example_data.csv")
    a = ad.read_h5ad(folder / "example_data.h5ad")
    obs = a.obs.copy()
    obs["CellID"] = [int(str(i).rsplit("_", 1)[-1]) for i in obs.index]
    m = raw.merge(obs[["CellID", "phenotype", "X_position", "Y_position"]], on="CellID", suffixes=("", "_h5ad"))
    if len(m) != len(raw) or not np.allclose(m["X_position"], m["X_position_h5ad"]):
        raise S2SInputError(folder, "example_data.csv and example_data.h5ad do not match by CellID")
    m = m.drop(columns=["X_position_h5ad", "Y_position_h5ad"])
    markers = [c for c in _drop_dna_bg(raw.columns) if c in list(a.var_names)]
    ds = standard_table(m, None, "X_position", "Y_position", markers, None, "phenotype", None, None, "CellID",
                        name="scimap_cycif")
    ds.description = ("real CyCIF (scimap example, 1 image, 3,029 cells): raw mean intensities of the 33 "
                      "markers of example_data.csv (DNA and background channels dropped), normalised by us "
                      "(arcsinh, robust per-marker scaling fitted on training cells); labels: the 25 gated "
                      "phenotypes of example_data.h5ad, matched by CellID (order and positions checked)")
    return ds


def load_layouts(root: Path) -> Dataset:
    df = pd.read_csv(root / "damond_diabetes_layouts" / "cells.csv.gz")
    ds = standard_table(df, "imageID", "x", "y", None, "cellType", None, "stage", "case", "cellID",
                        name="damond_diabetes_layouts")
    ds.description = ("real tissue layouts of Damond et al. 2019 (120 images, 12 donors, 253,777 cells): "
                      "cells carry only a phenotype (16 types) and a position; clinical status (Non-diabetic / "
                      "Onset / Long-duration) per image; leave donors out, every stage in every fold")
    ds.split = "leave donors out: 4 folds, each testing one donor per stage (donor order shuffled per seed)"
    ds.test_cells_per_image = 50
    return ds


def load_semisynthetic(root: Path, cells: str | None, images_per_donor: int = 3, workdir: str | None = None,
                       log=print) -> Dataset:
    """Measured semi-synthetic Damond cells: the cached table if present, else a stratified sample of
    images is simulated (``s2s simulate``) and measured here."""
    from .tables import load_table

    note = []
    if cells and Path(cells).exists():
        df = pd.read_csv(cells)
        note.append(f"measured cells of all 120 simulated images read from {cells} (s2s simulate seed 0, then "
                    "measured by spatial2sentence.measure)")
    else:
        from .bench.simulate import load_layouts as _ll, simulate_dataset

        lay = _ll(root / "damond_diabetes_layouts" / "cells.csv.gz")
        per = lay.groupby(["case"])["imageID"].unique() if "case" in lay.columns else None
        imgs = sorted(i for v in per for i in sorted(map(str, v))[:images_per_donor])
        out = Path(workdir or "out/benchmark_sim")
        log(f"simulating {len(imgs)} semi-synthetic images ({images_per_donor} per donor) into {out} ...")
        simulate_dataset(root / "damond_diabetes_layouts" / "cells.csv.gz", out, images=imgs, seed=0, workers=2)
        df = load_table(out, progress=False)
        note.append(f"{len(imgs)} simulated images ({images_per_donor} per donor, s2s simulate seed 0), measured here")
    markers = _drop_dna_bg([c for c in df.columns if c not in ("image", "Object", "x", "y", "area", "cell_type",
                                                               "donor", "stage", "nonfinite_pixels")
                            and pd.api.types.is_numeric_dtype(df[c])])
    ds = standard_table(df, "image", "x", "y", markers, None, "cell_type", "stage", "donor", "Object",
                        name="damond_semisynthetic")
    ds.description = ("SEMI-SYNTHETIC: real Damond 2019 layouts rendered into IMC-like images by s2s simulate "
                      "(per-type marker profiles, pixel noise, optical spill), measured by us; 16 cell types and "
                      "clinical status; leave donors out")
    ds.split = "leave donors out: 4 folds, each testing one donor per stage (donor order shuffled per seed)"
    ds.test_cells_per_image = 50
    ds.notes += note
    return ds


def load_builtin(name: str, root: Path, sim_cells: str | None = None, log=print) -> Dataset:
    if name == "damond_pancreas_toy":
        return load_damond_toy(root)
    if name == "scimap_cycif":
        return load_scimap(root)
    if name == "damond_diabetes_layouts":
        return load_layouts(root)
    if name == "damond_semisynthetic":
        return load_semisynthetic(root, sim_cells, log=log)
    from .errors import S2SInputError

    raise S2SInputError(name, f"unknown dataset (built in: {', '.join(BUILTIN)})")


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
        from .errors import S2SInputError

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
def lm_settings(method: str, budget: Budget, seed: int):
    from .settings import ModelSettings, PairSettings, PromptSettings, TrainSettings

    pairs = PairSettings(seed=seed)
    mix = {"type": 0.6, "status": 0.3, "pair": 0.1}
    prompt = PromptSettings(format="multi", neighbourhood_k=budget.neighbourhood_k,
                            neighbourhood_words=budget.neighbourhood_words, tissue=budget.tissue)
    if method == "s2s_no_neighbourhood":
        prompt.neighbourhood_k = 0
    elif method == "s2s_no_tissue":
        prompt.tissue = False
    if method == "c2s":  # Cell2Sentence: one cell, no space, image status = the mean of its cells' calls
        prompt = PromptSettings(format="single")
        mix.pop("pair")
    elif method == "s2s_no_negatives":
        pairs.n_neg = 0
    elif method == "s2s_no_positives":
        pairs.n_pos = 0
    elif method == "s2s_no_aux":
        mix.pop("pair")
    elif method not in ("s2s", "s2s_ranked", "s2s_no_values", "s2s_no_neighbourhood", "s2s_no_tissue"):
        raise ValueError(method)
    if prompt.tissue:  # a fifth of the prompts are tissue prompts (dropped where no image has a status)
        mix = {"type": 0.5, "status": 0.15, "pair": 0.15, "tissue": 0.2} if "pair" in mix else \
            {"type": 0.55, "status": 0.2, "tissue": 0.25}
    sentence = bench_sentence(budget, ranked=method == "s2s_ranked")
    if method in ("s2s_no_values", "s2s_ranked"):
        sentence.values = False
    # max_positions is raised by training when the longest prompt needs more (levels sentences)
    ms = ModelSettings(architecture="llama", hidden_size=budget.hidden_size, num_layers=budget.num_layers,
                       num_heads=budget.num_heads, intermediate_size=budget.intermediate_size, max_positions=160)
    ts = TrainSettings(seed=seed, steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr,
                       warmup_steps=budget.warmup_steps, task_mix=mix, class_balance=budget.class_balance,
                       panel_subset_prob=0.0, val_fraction=budget.val_fraction, eval_every=budget.eval_every,
                       eval_prompts=budget.eval_prompts, checkpoint_every=10 ** 9, patience=budget.patience,
                       num_threads=budget.threads, select_by=budget.select_by)
    return sentence, pairs, prompt, ms, ts


def bench_sentence(budget: Budget, ranked: bool = False):
    """The sentences of the benchmark's language models: ``budget.encoding`` (``s2s_ranked``: the v1 ranked
    sentences, top 12 above 0.3 by range, the levels-off ablation)."""
    from .settings import SentenceSettings

    if ranked or budget.encoding == "ranked":
        return SentenceSettings()
    return SentenceSettings(encoding=budget.encoding, n_levels=budget.n_levels, level_bins=budget.level_bins,
                            partner_words=budget.partner_words, values=budget.values)


def val_rule(train_df: pd.DataFrame) -> str:
    """The validation split of one LM training, the same rule for every language model: whole images when
    the training groups hold at least 5 images, else a spatial block of each image (the right-most
    ``val_fraction`` of its cells: the toy crops have 2 training images, the CyCIF fold 3 strips)."""
    return "images" if train_df["image"].nunique() >= 5 else "blocks"


def _sentence_words(budget: Budget | None = None) -> str:
    st = bench_sentence(budget or Budget())
    if st.encoding == "levels":
        return (f"every marker above {st.level_threshold} (range scale) as one word MARKER:L, L = 1..{st.n_levels} "
                f"from per-marker {st.level_bins} bins of the training cells, partner lines their "
                f"{st.partner_words or 'all'} highest words; s2s_ranked: v1 ranked words (top 12 above 0.3)")
    if st.encoding == "values":
        b = budget or Budget()
        return (f"every marker above {st.level_threshold} (range scale), highest first, each word carrying its "
                f"value; partner lines their {st.partner_words or 'all'} highest words"
                + (f"; an 'around' line (the {b.neighbourhood_k} nearest cells' mean, {b.neighbourhood_words} "
                   "words)" if b.neighbourhood_k else "")
                + ("; image status from tissue prompts" if b.tissue else "")
                + "; s2s_ranked: v1 ranked words (top 12 above 0.3), no values")
    return f"markers ranked by {st.rank_by}, top {st.top_k} above {st.threshold}"


def _lm_table(df: pd.DataFrame, ds: Dataset, with_labels: bool) -> pd.DataFrame:
    cols = ["image", "Object", "x", "y", *ds.markers]
    if ds.phenotype_only:
        cols.append("cell_type")  # the input phenotype
    elif with_labels and ds.cell_type:
        cols.append("cell_type")
    if with_labels and ds.clinical:
        cols.append("stage")
    return df[cols].reset_index(drop=True)


def lm_predict(model, test_df: pd.DataFrame, idx: np.ndarray, tasks, batch_size: int | None = None) -> dict:
    """Probabilities of each task's labels for the test cells ``idx`` (partners from the whole image)."""
    from .cellset import prepare_cells
    from .predict import PREDICT_BATCH_SIZE, score_tasks
    from .prompts import task_words

    cs = prepare_cells(test_df, model.markers, model.normalizer, source="test cells")
    cs.build_pairs(model.pair_settings)
    need = set(int(i) for i in idx)
    if model.prompt.format == "multi":
        for i in idx:
            need.update(int(p[0]) for p in cs.partners(int(i)))
    need = np.array(sorted(need))
    cache = dict(zip(need.tolist(), cs.sentences(need, model.sentence)))
    ctx = [model.encode_context(cs, int(i), sentence_cache=cache) for i in idx]
    order = np.argsort([len(c[0]) for c in ctx], kind="stable")
    batch_size = batch_size or PREDICT_BATCH_SIZE
    suffixes = {t: model.tokenizer.encode(task_words(t)) for t in tasks}
    label_ids = {t: model.label_ids(t) for t in tasks}
    out = {t: np.zeros((len(idx), len(label_ids[t])), np.float32) for t in tasks}
    for c0 in range(0, len(idx), batch_size):
        rows = order[c0:c0 + batch_size]
        scored = score_tasks(model.lm, [ctx[r][0] for r in rows], suffixes, label_ids, model.tokenizer.pad_id,
                             model.device, [ctx[r][1] for r in rows] if model.sentence.values else None)
        for t in tasks:
            out[t][rows] = scored[t]
    if "status" in tasks and model.prompt.tissue:  # every cell of an image: its tissue prompt's status
        from .predict import tissue_status

        tissue = tissue_status(model, cs)
        out["status"] = np.stack([tissue[im] for im in cs.image[idx]]).astype(np.float32)
    return out


def run_lm(method, ds, train_df, test_df, test_idx, budget, seed, type_labels, status_labels, workdir):
    from .training import train

    from dataclasses import replace

    s, p, pr, ms, ts = lm_settings(method, budget, seed)
    ts = replace(ts, val_split=val_rule(train_df))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = train(_lm_table(train_df, ds, True), workdir, sentence=s, pairs=p, prompt=pr, model_settings=ms,
                    train_settings=ts, type_labels=type_labels or None, status_labels=status_labels or None,
                    progress_bar=False, device="cpu", log=lambda *a, **k: None)
        tasks = (["type"] if ds.cell_type else []) + (["status"] if ds.clinical else [])
        probs = lm_predict(res.model, _lm_table(test_df, ds, False), test_idx, tasks)
    out = {}
    if "type" in probs:
        out["cell_type"] = _reorder(probs["type"], res.model.type_labels, type_labels)
    if "status" in probs:
        out["clinical"] = _reorder(probs["status"], res.model.status_labels, status_labels)
    return out, (res.seconds, res.steps_done, (res.best or {}).get("step", res.steps_done))


def _reorder(p, have, want):
    out = np.zeros((len(p), len(want)))
    pos = {c: j for j, c in enumerate(have)}
    for j, c in enumerate(want):
        if c in pos:
            out[:, j] = p[:, pos[c]]
    return out


# --------------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------------
def _metrics(y_true, y_pred) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    y_true, y_pred = np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str)
    acc = float((y_true == y_pred).mean())
    f1 = float(f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0))
    return acc, f1


_JOB_CTX = None


def budget_workers(budget: Budget) -> int:
    return max(1, int(getattr(budget, "workers", 1) or 1))


def _init_worker(ctx):
    global _JOB_CTX
    _JOB_CTX = ctx
    warnings.simplefilter("ignore")


def _fold_job(job):
    """One (seed, fold): every method trained on the training rows and evaluated on the test cells."""
    from threadpoolctl import threadpool_limits

    from .threads import torch_threads

    budget = _JOB_CTX[1]
    with threadpool_limits(limits=max(1, budget.threads)), torch_threads(max(1, budget.threads)):
        return _fold_job_inner(job)


def _fold_job_inner(job):
    seed, f, nf, tr, te, idx = job
    ds, budget, methods, type_labels, status_labels, tmpdir = _JOB_CTX
    df = ds.df
    train_df, test_df = df[tr].reset_index(drop=True), df[te].reset_index(drop=True)
    timg = test_df["image"].astype(str).to_numpy()[idx]
    y_type = test_df["cell_type"].astype(str).to_numpy()[idx] if ds.cell_type else None
    y_stat = test_df["stage"].astype(str).to_numpy()[idx] if ds.clinical else None
    img_truth = test_df.groupby("image")["stage"].first().astype(str).to_dict() if ds.clinical else {}
    preds = {}
    cm = [m for m in methods if m in CLASSICAL_METHODS]
    if cm or "composition_logreg" in methods:
        fm = B.FeatureMaker(ds.markers, "cell_type" if ds.phenotype_only else None, k=budget.k_neighbors).fit(train_df)
        own_tr, nb_tr = fm.transform(train_df)
        own_te, nb_te = fm.transform(test_df)
        for m in cm:
            Xtr, Xte = B.features_for(m, own_tr, nb_tr), B.features_for(m, own_te, nb_te)[idx]
            preds[m] = {}
            if ds.cell_type:
                preds[m]["cell_type"] = B.fit_predict_proba(m, Xtr, train_df["cell_type"], Xte, type_labels,
                                                            seed, budget.classical_max_train)
            if ds.clinical:
                preds[m]["clinical"] = B.fit_predict_proba(m, Xtr, train_df["stage"], Xte, status_labels,
                                                           seed, budget.classical_max_train)
        if "composition_logreg" in methods:
            classes = type_labels
            tr_types = train_df["cell_type"].astype(str).to_numpy()
            if ds.phenotype_only:
                te_types = test_df["cell_type"].astype(str).to_numpy()
            else:  # test images: types predicted by logreg_neighbors (labels are not inputs)
                p = B.fit_predict_proba("logreg_neighbors", np.hstack([own_tr, nb_tr]), tr_types,
                                        np.hstack([own_te, nb_te]), classes, seed, budget.classical_max_train)
                te_types = np.asarray(classes, dtype=object)[p.argmax(1)]
            ims_tr, C_tr = B.composition(tr_types, train_df["image"].astype(str).to_numpy(), classes)
            st_tr = train_df.groupby("image")["stage"].first().astype(str)
            ims_te, C_te = B.composition(te_types, test_df["image"].astype(str).to_numpy(), classes)
            p_img = B.fit_predict_proba("composition_logreg", C_tr, st_tr.loc[ims_tr].to_numpy(), C_te,
                                        status_labels, seed)
            row = {im: r for r, im in enumerate(ims_te)}
            preds["composition_logreg"] = {"clinical": p_img[[row[i] for i in timg]]}
    secs = []
    for m in [m for m in methods if m in LM_METHODS]:
        wd = Path(tmpdir) / f"{m}_s{seed}_f{f}"
        preds[m], s = run_lm(m, ds, train_df, test_df, idx, budget, seed, type_labels, status_labels, wd)
        secs.append(s)
        import shutil

        shutil.rmtree(wd, ignore_errors=True)
    records = []
    for m, pm in preds.items():
        if "cell_type" in pm:
            yp = np.asarray(type_labels, dtype=object)[pm["cell_type"].argmax(1)]
            records.append(("cell_type", m, list(y_type), list(yp)))
        if "clinical" in pm:
            pc = pm["clinical"]
            yp = np.asarray(status_labels, dtype=object)[pc.argmax(1)]
            records.append(("clinical_status_cells", m, list(y_stat), list(yp)))
            vote = B.image_vote(pc, timg)
            ims = list(vote)
            records.append(("clinical_status", m, [img_truth[i] for i in ims], [status_labels[vote[i]] for i in ims]))
    return seed, f, nf, records, secs, len(idx), int(test_df["image"].nunique())


def run_dataset(ds: Dataset, budget: Budget, methods=ALL_METHODS, log=print, workdir: str | None = None) -> dict:
    """Train and evaluate every method on every fold and seed; returns the per-dataset result dict."""
    t_start = time.time()
    methods = [m for m in ALL_METHODS if m in methods]
    df = ds.df
    groups = group_of(ds)
    folds0 = make_folds(ds, 0)  # decides whether clinical status can be benchmarked
    if not ds.clinical or not (ds.cell_type or ds.phenotype_only):
        methods = [m for m in methods if m != "composition_logreg"]  # needs clinical labels and cell types
    # ablations that change nothing on this dataset would only repeat s2s: no clinical task -> no tissue
    # prompts; phenotype-only cells -> no marker words (so no levels or values to take away)
    same_as_s2s = (["s2s_no_tissue"] if not ds.clinical else []) + \
        (["s2s_ranked", "s2s_no_values"] if ds.phenotype_only else [])
    methods = [m for m in methods if m not in same_as_s2s]
    if not ds.cell_type and not ds.clinical:
        from .errors import S2SInputError

        raise S2SInputError(ds.name, "no task left to benchmark")
    type_labels = sorted(df["cell_type"].astype(str).unique()) if (ds.cell_type or ds.phenotype_only) else []
    status_labels = sorted(df["stage"].astype(str).unique()) if ds.clinical else []
    per_image = budget.test_cells_per_image if budget.test_cells_per_image is not None else (ds.test_cells_per_image or 0)
    # records[task][method] -> list over seeds of (y_true, y_pred)
    rec = {t: {m: [] for m in methods} for t in TASKS}
    conf = {m: ([], []) for m in methods}
    lm_seconds, lm_steps, lm_best = [], [], []
    n_test_cells = n_test_images = 0
    log(f"[{ds.name}] {len(df)} cells, {df['image'].nunique()} images, markers {len(ds.markers)}"
        f"{' (phenotype-only)' if ds.phenotype_only else ''}; tasks: "
        f"{'cell type ' if ds.cell_type else ''}{'clinical status' if ds.clinical else ''}; "
        f"{len(folds0)} folds x {budget.seeds} seeds")
    tmp = tempfile.TemporaryDirectory(prefix="s2s_bench_", dir=workdir)
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
    global _JOB_CTX
    _JOB_CTX = (ds, budget, methods, type_labels, status_labels, tmp.name)
    acc = {s: {t: {m: ([], []) for m in methods} for t in TASKS} for s in range(budget.seeds)}
    n_cells = {s: 0 for s in range(budget.seeds)}
    n_imgs = {s: 0 for s in range(budget.seeds)}

    def collect(r):
        seed, f, nf, records, secs, nc, ni = r
        for t, m, yt, yp in records:
            acc[seed][t][m][0].extend(yt)
            acc[seed][t][m][1].extend(yp)
            if t == "cell_type":
                conf[m][0].extend(yt)
                conf[m][1].extend(yp)
        lm_seconds.extend(x[0] for x in secs)
        lm_steps.extend(x[1] for x in secs)
        lm_best.extend(x[2] for x in secs)
        n_cells[seed] += nc
        n_imgs[seed] += ni
        log(f"[{ds.name}] seed {seed} fold {f + 1}/{nf} done: {nc} test cells in {ni} images; "
            f"{time.time() - t_start:.0f} s")

    if budget_workers(budget) > 1 and len(jobs) > 1:
        import multiprocessing as mp

        # spawn (not fork): no OpenMP / torch thread pools inherited from this process
        with mp.get_context("spawn").Pool(min(budget_workers(budget), len(jobs)), initializer=_init_worker,
                                          initargs=(_JOB_CTX,)) as pool:
            for r in pool.imap_unordered(_fold_job, jobs):
                collect(r)
    else:
        for j in jobs:
            collect(_fold_job(j))
    _JOB_CTX = None
    for seed in range(budget.seeds):
        for t in TASKS:
            for m in methods:
                yt, yp = acc[seed][t][m]
                if yt:
                    rec[t][m].append((_metrics(yt, yp), len(yt)))
    n_test_cells, n_test_images = n_cells[0], n_imgs[0]
    tmp.cleanup()
    result = {}
    for t in TASKS:
        for m in methods:
            runs = rec[t][m]
            if not runs:
                continue
            a = np.array([r[0][0] for r in runs])
            f1 = np.array([r[0][1] for r in runs])
            sd = (lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0)
            result.setdefault(t, {})[m] = {
                "accuracy_mean": float(a.mean()), "accuracy_sd": sd(a),
                "macro_f1_mean": float(f1.mean()), "macro_f1_sd": sd(f1),
                "n_test_cells": int(n_test_cells), "n_test_images": int(n_test_images),
                "n_seeds": len(runs),
            }
    result["_meta"] = {
        "dataset": ds.name, "description": ds.description, "split": ds.split or "by group/image",
        "n_cells": int(len(df)), "n_images": int(df["image"].nunique()), "markers": ds.markers,
        "phenotype_only": ds.phenotype_only, "n_folds": len(folds0),
        "test_cells_per_image": int(per_image or 0), "cell_type_labels": type_labels if ds.cell_type else [],
        "status_labels": status_labels, "notes": ds.notes, "wall_s": round(time.time() - t_start, 1),
        "lm_train_seconds_mean": round(float(np.mean(lm_seconds)), 2) if lm_seconds else None,
        "n_lm_trainings": len(lm_seconds),
        "lm_steps_mean": round(float(np.mean(lm_steps)), 1) if lm_steps else None,
        "lm_steps_range": [int(min(lm_steps)), int(max(lm_steps))] if lm_steps else None,
        "lm_best_step_mean": round(float(np.mean(lm_best)), 1) if lm_best else None,
    }
    result["_confusion"] = {m: v for m, v in conf.items() if v[0]}
    return result


# --------------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------------
def _fmt(r: dict | None, key="accuracy") -> str:
    if not r:
        return "-"
    return f"{100 * r[key + '_mean']:.1f} ± {100 * r[key + '_sd']:.1f}"


def margins(res: dict) -> list[str]:
    lines = []
    for t, paper in (("cell_type", PAPER_MARGIN["cell_type"]), ("clinical_status", PAPER_MARGIN["clinical_status"])):
        r = res.get(t)
        if not r or "s2s" not in r:
            continue
        s = 100 * r["s2s"]["accuracy_mean"]
        if "c2s" in r:
            d = s - 100 * r["c2s"]["accuracy_mean"]
            lines.append(f"- {t}: s2s − c2s = {d:+.1f} points (paper margin {paper:+.2f}): "
                         f"{'MET' if d >= paper else 'NOT MET'}")
        cl = {m: v for m, v in r.items() if m in CLASSICAL_METHODS + ("composition_logreg",)}
        if cl:
            best = max(cl, key=lambda m: cl[m]["accuracy_mean"])
            d = s - 100 * cl[best]["accuracy_mean"]
            lines.append(f"- {t}: s2s − best classical ({best}) = {d:+.1f} points: "
                         f"{'level or above' if d >= 0 else 'BELOW'}")
    return lines


def dataset_markdown(name: str, res: dict) -> str:
    meta = res.get("_meta", {})
    rows = [f"### {name}" + (" (kept from an earlier run)" if meta.get("kept") else ""), "",
            meta.get("description", ""), "",
            f"- split: {meta.get('split')}; {meta.get('n_folds')} folds; {meta.get('n_cells')} cells in "
            f"{meta.get('n_images')} images; test cells per image: "
            f"{meta.get('test_cells_per_image') or 'all'}; wall time {meta.get('wall_s')} s "
            f"({meta.get('n_lm_trainings')} LM trainings, {meta.get('lm_train_seconds_mean')} s each on average"
            + (f", {meta['lm_steps_mean']} steps on average (range {meta['lm_steps_range'][0]}-"
               f"{meta['lm_steps_range'][1]}; best validation step {meta.get('lm_best_step_mean')} on average)"
               if meta.get("lm_steps_mean") else "") + ")"]
    run = meta.get("run")
    if run:
        rows.append(f"- run: `{run.get('command')}`; budget: "
                    + ", ".join(f"{k}={v}" for k, v in run.get("budget", {}).items())
                    + (f"; sentences: {run['sentences']}" if run.get("sentences") else ""))
    for n in meta.get("notes", []):
        rows.append(f"- note: {n}")
    rows += ["", "| method | cell type acc | cell type macro F1 | clinical status acc (per image) | "
             "clinical macro F1 (per image) | clinical status acc (per cell) |", "|---|---|---|---|---|---|"]
    for m in ALL_METHODS:
        cells = [res.get("cell_type", {}).get(m), res.get("cell_type", {}).get(m),
                 res.get("clinical_status", {}).get(m), res.get("clinical_status", {}).get(m),
                 res.get("clinical_status_cells", {}).get(m)]
        if not any(cells):
            continue
        rows.append(f"| {m} | {_fmt(cells[0])} | {_fmt(cells[1], 'macro_f1')} | {_fmt(cells[2])} | "
                    f"{_fmt(cells[3], 'macro_f1')} | {_fmt(cells[4])} |")
    n = []
    for t in ("cell_type", "clinical_status", "clinical_status_cells"):
        r = next(iter(res.get(t, {}).values()), None)
        if r:
            n.append(f"{t}: {r['n_test_cells']} test cells, {r['n_test_images']} test images per seed")
    rows += ["", "Accuracy in % (mean ± sd over seeds). " + "; ".join(n), "", "Margins:", ""]
    rows += margins(res) or ["- (no s2s result)"]
    return "\n".join(rows) + "\n"


def confusion_png(name: str, res: dict, path: Path) -> Path | None:
    conf = res.get("_confusion", {})
    ct = res.get("cell_type", {})
    if "s2s" not in conf or not ct:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    cl = [m for m in ct if m in CLASSICAL_METHODS]
    shown = ["s2s", "c2s"] + ([max(cl, key=lambda m: ct[m]["accuracy_mean"])] if cl else [])
    shown = [m for m in shown if m in conf]
    labels = sorted(set(conf["s2s"][0]))
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown) + 1, 4.2 + 0.12 * len(labels)))
    axes = np.atleast_1d(axes)
    for ax, m in zip(axes, shown):
        cm = confusion_matrix(conf[m][0], conf[m][1], labels=labels).astype(float)
        cm /= np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
        ax.set_title(f"{m}: acc {100 * ct[m]['accuracy_mean']:.1f}%", fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels if ax is axes[0] else [], fontsize=6)
        ax.set_xlabel("predicted", fontsize=8)
    axes[0].set_ylabel("true (row-normalised, pooled over seeds)", fontsize=8)
    fig.suptitle(f"{name}: cell type confusion", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def kept_results(path: Path, new: dict) -> dict:
    """The datasets of an earlier ``accuracy.json`` in the same folder that this run does not redo, each
    with the run (budget, command) it came from, so a run of one dataset keeps the other datasets' rows."""
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(old, dict) or "cell_type" in old or "clinical_status" in old:  # a single-table run
        return {}
    top = old.get("_meta", {})
    prev = {"budget": top.get("budget", {}), "command": top.get("command"), "machine": top.get("machine"),
            "sentences": top.get("sentences", "v1: markers ranked by range, top 12 above 0.3")}
    out = {}
    for name, res in old.items():
        if name == "_meta" or name in new or not isinstance(res, dict):
            continue
        res = dict(res)
        res["_meta"] = {**res.get("_meta", {}), "run": res.get("_meta", {}).get("run", prev), "kept": True}
        out[name] = res
    return out


def write_results(out: Path, results: dict, budget: Budget, command: str, wall_s: float, single: bool) -> None:
    """``accuracy.json`` + ``accuracy.md`` (+ confusion PNGs) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"budget": budget.to_dict(), "command": command, "wall_s": round(wall_s, 1),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores (shared), "
                       f"python {sys.version.split()[0]}",
            "methods": list(ALL_METHODS), "paper_margins_points": PAPER_MARGIN}

    def clean(r):
        return {k: v for k, v in r.items() if k != "_confusion"}

    run = {"budget": budget.to_dict(), "command": command, "machine": meta["machine"],
           "sentences": _sentence_words(budget)}
    results = {name: {**res, "_meta": {**res.get("_meta", {}), "run": res.get("_meta", {}).get("run", run)}}
               for name, res in results.items()}
    if single:
        (name, res), = results.items()
        js = {**clean(res), "_meta": {**res["_meta"], **meta}}
    else:
        results = {**kept_results(out / "accuracy.json", results), **results}
        results = {k: results[k] for k in sorted(results, key=lambda k: (BUILTIN + (k,)).index(k))}
        js = {name: clean(res) for name, res in results.items()}
        js["_meta"] = meta
    (out / "accuracy.json").write_text(json.dumps(js, indent=1, default=float))
    md = ["# Accuracy benchmark (`s2s benchmark`)", "",
          f"Command: `{command}`  ", f"Wall time: {wall_s / 60:.1f} min ({wall_s:.0f} s) on {meta['machine']}.", "",
          "Budget of this run (the same for every language model): "
          + ", ".join(f"{k}={v}" for k, v in budget.to_dict().items()),
          "", "Language models: small Llama-architecture causal LMs trained from scratch by "
          "`spatial2sentence.training.train` (multi-task: cell type 0.6, clinical status 0.3, pair 0.1 of the "
          "prompts; panel-subset augmentation off). This run: at most "
          f"{budget.steps} steps, validation on {budget.val_fraction:.0%} of the training groups "
          "(whole images when the training part has 5 or more, else the right-most block of each image) every "
          f"{budget.eval_every} steps, early stopping after {budget.patience} evaluations without a better "
          "validation loss (best state kept); type sampling weight ~ count ** "
          f"-{budget.class_balance}; sentences: {_sentence_words(budget)}. `c2s`: single-cell prompts, no pair "
          "task. Classical baselines: `spatial2sentence.baselines`. Nothing is tuned on test folds. Datasets "
          "marked 'kept' come from an earlier run (their own run line gives its budget).", ""]
    for name, res in results.items():
        md.append(dataset_markdown(name, res))
        png = out / f"confusion_{name}.png"
        if not res.get("_meta", {}).get("kept"):
            png = confusion_png(name, res, png)
        if png and png.exists():
            md += [f"![{name} confusion]({png.name})", ""]
    (out / "accuracy.md").write_text("\n".join(md))


def run_benchmark(datasets: list[Dataset] | list[str], out: str | Path, budget: Budget | None = None,
                  methods=ALL_METHODS, data_root: str | Path = "../shared/data", sim_cells: str | None = None,
                  command: str = "", log=print) -> dict:
    budget = budget or Budget()
    t0 = time.time()
    log("budget: " + json.dumps(budget.to_dict()))
    results = {}
    single = len(datasets) == 1 and isinstance(datasets[0], Dataset)
    for d in datasets:
        ds = d if isinstance(d, Dataset) else load_builtin(d, Path(data_root), sim_cells, log=log)
        results[ds.name] = run_dataset(ds, budget, methods, log=log)
        # partial results are written after each dataset
        write_results(Path(out), results, budget, command, time.time() - t0, single)
    wall = time.time() - t0
    write_results(Path(out), results, budget, command, wall, single)
    log(f"done in {wall / 60:.1f} min; results in {out}/accuracy.json and accuracy.md")
    return results
