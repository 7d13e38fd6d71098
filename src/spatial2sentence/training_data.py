"""The training data of a model: its panel and label sets, the validation split (by image, or by a
spatial block of each image for a few images) and the prompts drawn for each task (:class:`PromptSampler`).

Each step's prompts are drawn by task from ``task_mix``:

* ``type``: anchor cell with a known cell type (sampling weight ~ count(type) ** -class_balance, or
  ``-subset_class_balance`` for a prompt that sees a panel subset);
* ``status``: anchor cell of an image with a known clinical status (balanced across statuses);
  phenotype-only cells (no markers) take part in this task only;
* ``pair``: anchor + one of its partners, answer ``similar`` (positive) or ``dissimilar`` (negative);
* ``tissue``: a window of an image's cells as one tissue sentence, answer its clinical status.

With probability ``panel_subset_prob`` a prompt only sees a random subset of the panel (size drawn
log-uniformly between ``panel_subset_min`` and the panel size; the same subset for anchor and partners),
so that images carrying only part of the panel are read instead of collapsing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd

from .aliases import canonical_marker
from .cellset import (STATUS_COLS, TYPE_COLS, CellSet, concat_cellsets, find_column, marker_columns,
                      prepare_cells)
from .errors import ModelInputError
from .normalize import Normalizer
from .numeric import VALUE_MAX
from .prompts import PAIR_ANSWERS, pair_prompt, task_words
from .sentences import status_token, type_token
from .settings import PairSettings, SentenceSettings, TrainSettings
from .tissue import TISSUE, random_window, tissue_words

IMAGE_COLS = ("image", "imageID", "image_id", "ImageNumber", "sample")
X_COLS = ("x", "X", "Pos_X", "X_position", "centroid-1", "Location_Center_X", "X_centroid")


def _labels(values, given: list[str] | None, what: str, source: str) -> list[str]:
    found = sorted({str(v) for v in pd.Series(values, dtype=object).dropna()} - {"", "nan"})
    if given is None:
        return found
    extra = sorted(set(found) - set(given))
    if extra:
        raise ModelInputError(
            source, f"the data's {what} labels differ from the configured label set: {extra} are not in {given}"
        )
    unseen = sorted(set(given) - set(found))
    if unseen:
        warnings.warn(f"{source}: {what} labels never seen in the training data: {unseen}", stacklevel=2)
    return list(given)


def prepare_training(df: pd.DataFrame, sentence: SentenceSettings, type_labels=None, status_labels=None,
                     markers=None, source="training data"):
    """Panel (canonical), label sets and a fitted normaliser from a training table."""
    cols = marker_columns(df) if markers is None else list(markers)
    canon, seen = [], set()
    for c in cols:
        k = canonical_marker(c)
        if k not in seen:
            seen.add(k)
            canon.append(k)
    tcol, scol = find_column(df, TYPE_COLS), find_column(df, STATUS_COLS)
    types = _labels(df[tcol] if tcol else [], type_labels, "cell type", source)
    stats = _labels(df[scol] if scol else [], status_labels, "clinical status", source)
    if not types and not stats:
        raise ModelInputError(source, "no cell_type or stage/status column with labels")
    return canon, types, stats


def split_images(images: np.ndarray, fraction: float, seed: int, strata: dict | None = None) -> set:
    """Validation images: a seeded ``fraction`` of the images (at least one when there are two)."""
    uniq = sorted(pd.unique(images))
    if len(uniq) < 2 or fraction <= 0:
        return set()
    rng = np.random.default_rng(seed + 7919)
    n_val = max(1, int(round(fraction * len(uniq))))
    return set(rng.choice(uniq, n_val, replace=False).tolist())


def split_blocks(images: np.ndarray, x: np.ndarray, fraction: float) -> np.ndarray:
    """Validation cells: in every image, the right-most ``fraction`` of its cells (by x): a spatial block,
    never random cells. For training sets of a few images (the toy crops, the CyCIF strips), where holding
    out a whole image would take half or a third of the training cells. Validation cells' labels are only
    ever answers of validation prompts; their sentences may appear as partners of training cells."""
    images = np.asarray(images).astype(str)
    out = np.zeros(len(images), bool)
    if fraction <= 0:
        return out
    for im in pd.unique(images):
        sel = np.flatnonzero(images == im)
        if sel.size < 10:
            continue
        cut = np.quantile(x[sel], 1.0 - fraction)
        out[sel[x[sel] > cut]] = True
    return out


def panel_and_labels(tables: list[pd.DataFrame], sentence: SentenceSettings, type_labels=None,
                     status_labels=None) -> tuple[list[str], list[str], list[str]]:
    """The panel (canonical names, expression tables in order) and the type and status label sets of
    all the training tables."""
    panel: list[str] = []
    all_types, all_stats = [], []
    for t in tables:
        canon, types, stats = prepare_training(t, sentence, type_labels, status_labels)
        panel += [c for c in canon if c not in panel]
        all_types += types
        all_stats += stats
    return panel, type_labels or sorted(set(all_types)), status_labels or sorted(set(all_stats))


def split_validation(tables: list[pd.DataFrame], ts: TrainSettings) -> list[tuple[pd.DataFrame, np.ndarray]]:
    """Each table (image names made unique per table) with its validation flags: whole images
    (``val_split="images"``) or the right-most block of each image (``"blocks"``)."""
    out = []
    for k, t in enumerate(tables):
        t = t.copy()
        icol = find_column(t, IMAGE_COLS)
        if icol is None:
            t["image"] = f"table{k}"
            icol = "image"
        t[icol] = (f"t{k}:" if len(tables) > 1 else "") + t[icol].astype(str)
        if ts.val_split == "blocks":
            xcol = find_column(t, X_COLS)
            is_val = split_blocks(t[icol].to_numpy(), t[xcol].to_numpy(np.float64) if xcol else
                                  np.arange(len(t), dtype=np.float64), ts.val_fraction)
        else:
            is_val = t[icol].isin(split_images(t[icol].to_numpy(), ts.val_fraction, ts.seed + k)).to_numpy()
        out.append((t, is_val))
    return out


def fit_normalizer(split: list[tuple[pd.DataFrame, np.ndarray]], panel: list[str],
                   sentence: SentenceSettings) -> Normalizer:
    """The normaliser (and, for ``levels`` sentences, the level bins) fitted on the training cells only."""
    norm = Normalizer(cofactor=sentence.cofactor, scaling=sentence.scaling)
    expr = [t.loc[~is_val, cols].rename(columns=canonical_marker)
            for t, is_val in split if (cols := marker_columns(t))]
    if expr:
        fit_df = pd.concat(expr, ignore_index=True)
        fit_df = fit_df.loc[:, ~fit_df.columns.duplicated()]
        fit_values = (fit_df[panel].to_numpy(np.float64) if set(panel) <= set(fit_df.columns) else
                      fit_df.reindex(columns=panel).to_numpy(np.float64))
        norm.fit(fit_values, panel)
        if sentence.encoding == "levels":
            norm.fit_levels(fit_values, panel, sentence.n_levels, sentence.level_threshold, sentence.level_bins)
    return norm


def training_cells(split: list[tuple[pd.DataFrame, np.ndarray]], panel: list[str], norm: Normalizer,
                   pairs: PairSettings, seed: int) -> tuple[CellSet, np.ndarray]:
    """All tables' cells as one CellSet with their partners, and the validation flags."""
    sets = [prepare_cells(t, panel, norm, source=f"table {k}") for k, (t, _) in enumerate(split)]
    cs = concat_cellsets(sets) if len(sets) > 1 else sets[0]
    cs.build_pairs(pairs, seed=seed)
    return cs, np.concatenate([is_val for _, is_val in split])


def pair_example(cs: CellSet, i: int, j: int, sentence: SentenceSettings, present=None,
                 sentence_cache: dict | None = None) -> tuple[list[str], list[float]]:
    """The pair task's prompt of cell ``i`` and its partner ``j`` (the partner's line cut to
    ``partner_words`` words) and the value each word carries (0 for the frame words)."""
    if sentence_cache is None:
        a, b = cs.sentences([i, j], sentence, present)
    else:
        a, b = sentence_cache[i], sentence_cache[j]
    if sentence.partner_words > 0:
        b = b[:sentence.partner_words]
    # [BOS] cell : <a> ; partner : <b> ; task pair answer
    values = [0.0] * 3 + cs.word_values(i, a) + [0.0] * 3 + cs.word_values(j, b) + [0.0] * 4
    return pair_prompt(a, b), values


class PromptSampler:
    """Draws training / validation prompts from a CellSet (deterministic given its generator)."""

    def __init__(self, model, cs: CellSet, cells: np.ndarray, ts: TrainSettings):
        self.model, self.cs, self.ts = model, cs, ts
        self.cells = cells
        self.M = len(cs.markers)
        ph = cs.is_phenotype
        tl = set(model.type_labels)
        sl = set(model.status_labels)
        ct = cs.cell_type if cs.cell_type is not None else np.full(len(cs), "", object)
        st = cs.status if cs.status is not None else np.full(len(cs), "", object)
        # cells whose known type is one of the model's labels (expression cells only)
        self.typed = ~ph & np.isin(ct.astype(str), np.asarray(sorted(tl), dtype=str))
        self.type_cells = cells[self.typed[cells]] if len(cells) else cells
        self.status_cells = cells[np.array([st[i] in sl for i in cells], bool)] if len(cells) else cells
        self.type_cdf = np.cumsum(self._weights(ct[self.type_cells], ts.class_balance))
        sub = ts.class_balance if ts.subset_class_balance is None else ts.subset_class_balance
        self.subset_type_cdf = (self.type_cdf if sub == ts.class_balance
                                else np.cumsum(self._weights(ct[self.type_cells], sub)))
        self.status_cdf = np.cumsum(self._weights(st[self.status_cells], 1.0))
        has = (cs.pairs.pos_idx[cells] >= 0).any(1) | (cs.pairs.neg_idx[cells] >= 0).any(1)
        self.pair_cells = cells[has]
        # tissue task: the status-labelled images (each one status), their cells, drawn evenly by status
        self.tissue_images: list[np.ndarray] = []
        tissue_status = []
        if model.prompt.tissue and len(self.status_cells):
            for im in pd.unique(cs.image[self.status_cells]):
                members = self.status_cells[cs.image[self.status_cells] == im]
                if len(members) >= 2:
                    self.tissue_images.append(members)
                    tissue_status.append(str(st[members[0]]))
        self.tissue_cdf = np.cumsum(self._weights(np.asarray(tissue_status, dtype=object), 1.0))
        self.alone_prompt = replace(model.prompt, format="single")
        self.full_cache = dict(zip(range(len(cs)), cs.sentences(np.arange(len(cs)), model.sentence)))
        mix = {k: float(v) for k, v in ts.task_mix.items() if v > 0}
        for k in mix:
            if k not in ("type", "status", "pair", "tissue"):
                raise ModelInputError("task_mix", f"unknown task {k!r} (type, status, pair, tissue)")
        avail = {"type": len(self.type_cells), "status": len(self.status_cells), "pair": len(self.pair_cells),
                 "tissue": len(self.tissue_images)}
        mix = {k: v for k, v in mix.items() if avail[k] > 0}
        if not mix:
            raise ModelInputError("training data", "no cell carries a label usable by any task")
        self.tasks = list(mix)
        self.task_p = np.array([mix[k] for k in self.tasks]) / sum(mix.values())

    @staticmethod
    def _weights(labels: np.ndarray, power: float) -> np.ndarray:
        if len(labels) == 0:
            return np.zeros(0)
        u, inv, cnt = np.unique(labels.astype(str), return_inverse=True, return_counts=True)
        w = cnt[inv].astype(float) ** (-power)
        return w / w.sum()

    def _known_types(self, cells: np.ndarray) -> np.ndarray:
        """The cell types of ``cells`` that are labels of the model (expression cells only)."""
        cells = np.asarray(cells, np.int64)
        return self.cs.cell_type[cells[self.typed[cells]]] if self.cs.cell_type is not None else np.zeros(0, object)

    def _subset(self, rng) -> np.ndarray | None:
        if rng.random() >= self.ts.panel_subset_prob or self.M <= self.ts.panel_subset_min:
            return None
        lo, hi = math.log(self.ts.panel_subset_min), math.log(self.M)
        k = int(round(math.exp(rng.uniform(lo, hi))))
        k = min(max(k, self.ts.panel_subset_min), self.M)
        present = np.zeros(self.M, bool)
        present[rng.choice(self.M, k, replace=False)] = True
        return present

    def draw(self, rng) -> tuple[list[str], list[float], str]:
        """One prompt (words up to ``answer``), the value each word carries (:mod:`.numeric`) and its
        answer word."""
        task = self.tasks[min(int(np.searchsorted(np.cumsum(self.task_p), rng.random())), len(self.tasks) - 1)]
        m, cs = self.model, self.cs
        if task == "tissue":
            k = min(int(np.searchsorted(self.tissue_cdf, rng.random() * self.tissue_cdf[-1])),
                    len(self.tissue_images) - 1)
            members = self.tissue_images[k]
            window = random_window(cs, members, rng)
            # the composition from the window's known types (at prediction: the model's own calls)
            calls = self._known_types(window) if m.prompt.tissue_types else None
            words, values = tissue_words(cs, window, calls)
            tw = task_words("status")
            return words + tw, values + [0.0] * len(tw), status_token(cs.status[members[0]])
        present = self._subset(rng)
        cache = self.full_cache if present is None else None
        if task == "pair":
            i = int(self.pair_cells[rng.integers(len(self.pair_cells))])
            parts = cs.partners(i)
            j, role, *_ = parts[int(rng.integers(len(parts)))]
            words, values = pair_example(cs, i, j, m.sentence, present, cache)
            return words, values, PAIR_ANSWERS[0] if role == "positive" else PAIR_ANSWERS[1]
        if task == "type":
            cdf = self.type_cdf if present is None else self.subset_type_cdf
            i = int(self.type_cells[min(np.searchsorted(cdf, rng.random() * cdf[-1]), len(self.type_cells) - 1)])
            answer = type_token(cs.cell_type[i])
        else:
            i = int(self.status_cells[min(np.searchsorted(self.status_cdf, rng.random() * self.status_cdf[-1]),
                                          len(self.status_cells) - 1)])
            answer = status_token(cs.status[i])
        prompt = m.prompt
        # the anchor-alone view draws from the generator only when asked for, so that runs without it
        # keep their exact prompts; type prompts only: a status prompt of one cell alone asks an image's
        # status of one cell, and with line positions it has the shape of a tissue prompt (one line, then
        # the task). Semi-synthetic status per image (benchmarks/results/semisynthetic_trace): 40.3 with
        # the alone view on both, 44.4 on type prompts only, 52.5 without it: the view itself still costs
        if (task == "type" and self.ts.anchor_alone > 0 and prompt.format == "multi"
                and rng.random() < self.ts.anchor_alone):
            prompt = self.alone_prompt
        words, values = cs.context(i, m.sentence, prompt, present, sentence_cache=cache)
        tw = task_words(task)
        return words + tw, values + [0.0] * len(tw), answer

    def batch(self, rng, n: int):
        """``(ids, answers, tasks, values)`` of ``n`` prompts; ``values`` is None for a model whose words
        carry no values."""
        tok = self.model.tokenizer
        seqs, answers, tasks, values = [], [], [], []
        noise = float(self.ts.value_noise)
        for _ in range(n):
            words, vals, ans = self.draw(rng)
            if noise > 0 and self.model.sentence.values:  # jitter the carried values (not the words)
                v = np.asarray(vals, np.float64)
                on = v > 0
                v[on] = np.clip(v[on] + rng.normal(0.0, noise, int(on.sum())), 1e-3, VALUE_MAX)
                vals = v.tolist()
            seqs.append(tok.encode(words))
            answers.append(tok.vocab[ans])
            tasks.append("tissue" if words[1] == TISSUE else words[-2])
            values.append(vals)
        return seqs, answers, tasks, (values if self.model.sentence.values else None)
