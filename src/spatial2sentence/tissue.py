"""Tissue prompts: the clinical status of an image read from the whole tissue, not from three partners.

Why: v1 called an image's status by averaging per-cell calls, each made from one cell and three
partners; on the Damond layouts the composition of the image alone (``composition_logreg``) did better.
A tissue prompt writes the image (or a window of it) as one sentence, read by the same language model:

    [BOS] tissue : INS CD3 CD8a PTPRC ... ; task status answer S:Onset [EOS]

* expression cells: every measured marker, ordered by the fraction of the cells in which it is high
  (range value above ``POSITIVE``), the word carrying the square root of that fraction (:mod:`.numeric`;
  the root spreads the small fractions of rare cell types);
* cells known by a phenotype only: every phenotype present, ordered by its fraction, carrying sqrt(fraction);
* with ``PromptSettings.tissue_types`` the expression words are followed by the image's cell-type
  composition written the same way (every type present, by fraction, carrying sqrt(fraction)): in
  training the known types of the window's cells, at prediction the model's own type calls on a sample
  of the image's cells (:data:`TYPE_SAMPLE`). Why: on the semi-synthetic images a logistic regression on
  the composition of predicted types read the images' status 10 points better than s2s's marker
  fractions (``benchmarks/results/accuracy``), and on the layouts, whose tissue words are types, s2s
  matched it. Measured (``benchmarks/results/semi_v2``, 3 seeds): image status 45.8 with it against 55.3
  without: trained on true compositions, the reader is shown the model's calls, whose rare types are far
  from the truth. Off by default.

Training (task ``tissue``, :class:`~spatial2sentence.training_data.PromptSampler`) writes tissue prompts of
random windows of the training images (the ``k`` cells nearest a random cell, ``k`` drawn between a
quarter of the image and all of it), so the model sees many tissues per image; prediction writes one
prompt per image from all its cells.
"""

from __future__ import annotations

import numpy as np

from .numeric import VALUE_MAX
from .prompts import BOS
from .sentences import type_token

TISSUE = "tissue"
POSITIVE = 0.5  # range value above which a marker counts as high in a cell (0.5: half its training range)
MIN_WINDOW = 20  # smallest window of cells a training tissue prompt is written from
# cells per image whose type calls give the composition of a tissue prompt at prediction (a seeded
# sample; all cells of smaller images): the fractions' sampling error stays under 2.3 points
TYPE_SAMPLE = 500


def _fractions(labels) -> tuple[list[str], np.ndarray]:
    """Type words of the labels present and their fractions."""
    names, counts = np.unique(np.asarray(labels).astype(str), return_counts=True)
    return [type_token(n) for n in names], counts / max(counts.sum(), 1)


def tissue_sentence(cs, idx, type_calls=None) -> tuple[list[str], list[float]]:
    """Words and values of the tissue made of cells ``idx`` of a :class:`~spatial2sentence.cellset.CellSet`;
    ``type_calls`` (cell-type labels of some of its cells, known or predicted): their composition follows
    the expression words."""
    idx = np.asarray(idx, np.int64)
    if idx.size == 0:
        return [], []
    ph = cs.is_phenotype[idx]
    if ph.all():
        words, frac = _fractions(cs.phenotype[idx])
    else:
        ex = idx[~ph]
        u = np.clip(cs.range_values(ex), 0.0, VALUE_MAX) if cs.rank_bounds is not None else cs.z[ex]
        present = cs.present[ex]
        measured = present.any(0)
        high = ((u > POSITIVE) & present).sum(0) / np.maximum(present.sum(0), 1)
        keep = np.flatnonzero(measured)
        frac = high[keep]
        words = [cs.markers[j] for j in keep]
    words, values = _by_fraction(words, frac)
    if type_calls is not None and len(type_calls) and not ph.all():
        tw, tv = _by_fraction(*_fractions(type_calls))
        words, values = words + tw, values + tv
    return words, values


def _by_fraction(words, frac) -> tuple[list[str], list[float]]:
    """The words, highest fraction first, each carrying sqrt(fraction)."""
    order = np.argsort(-np.asarray(frac), kind="stable")
    return [words[k] for k in order], [float(np.sqrt(frac[k])) for k in order]


def tissue_words(cs, idx, type_calls=None) -> tuple[list[str], list[float]]:
    """``[BOS] tissue : <sentence> ;`` and its values (no task words)."""
    words, values = tissue_sentence(cs, idx, type_calls)
    return [BOS, TISSUE, ":", *words, ";"], [0.0, 0.0, 0.0, *values, 0.0]


def type_sample(cs, image_cells: np.ndarray, n: int = TYPE_SAMPLE) -> np.ndarray:
    """The expression cells of one image whose type calls give its tissue prompt's composition: all of
    them, or a sample of ``n`` seeded by the image's size (the same cells on every run)."""
    cells = np.asarray(image_cells, np.int64)
    cells = cells[~cs.is_phenotype[cells]]
    if len(cells) <= n:
        return cells
    return np.sort(np.random.default_rng(len(cells)).choice(cells, n, replace=False))


def random_window(cs, cells: np.ndarray, rng) -> np.ndarray:
    """The ``k`` cells of ``cells`` (one image) nearest a random one of them, ``k`` drawn uniformly between
    a quarter of them (at least :data:`MIN_WINDOW`) and all of them."""
    cells = np.asarray(cells, np.int64)
    n = len(cells)
    lo = min(n, max(MIN_WINDOW, n // 4))
    k = int(rng.integers(lo, n + 1))
    if k >= n:
        return cells
    centre = cs.xy[cells[int(rng.integers(n))]]
    d = ((cs.xy[cells] - centre) ** 2).sum(1)
    return cells[np.argpartition(d, k - 1)[:k]]
