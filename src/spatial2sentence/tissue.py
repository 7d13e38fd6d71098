"""Tissue prompts: the clinical status of an image read from the whole tissue, not from three partners.

Why: v1 called an image's status by averaging per-cell calls, each made from one cell and three
partners; on the Damond layouts the composition of the image alone (``composition_logreg``) did better.
A tissue prompt writes the image (or a window of it) as one sentence, read by the same language model:

    [BOS] tissue : INS CD3 CD8a PTPRC ... ; task status answer S:Onset [EOS]

* expression cells: every measured marker, ordered by the fraction of the cells in which it is high
  (range value above ``POSITIVE``), the word carrying the square root of that fraction (:mod:`.numeric`;
  the root spreads the small fractions of rare cell types);
* cells known by a phenotype only: every phenotype present, ordered by its fraction, carrying sqrt(fraction).

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


def tissue_sentence(cs, idx) -> tuple[list[str], list[float]]:
    """Words and values of the tissue made of cells ``idx`` of a :class:`~spatial2sentence.cellset.CellSet`."""
    idx = np.asarray(idx, np.int64)
    if idx.size == 0:
        return [], []
    ph = cs.is_phenotype[idx]
    if ph.all():
        names, counts = np.unique(cs.phenotype[idx].astype(str), return_counts=True)
        frac = counts / counts.sum()
        words = [type_token(n) for n in names]
    else:
        ex = idx[~ph]
        u = np.clip(cs.range_values(ex), 0.0, VALUE_MAX) if cs.rank_bounds is not None else cs.z[ex]
        present = cs.present[ex]
        measured = present.any(0)
        high = ((u > POSITIVE) & present).sum(0) / np.maximum(present.sum(0), 1)
        keep = np.flatnonzero(measured)
        frac = high[keep]
        words = [cs.markers[j] for j in keep]
    order = np.argsort(-np.asarray(frac), kind="stable")
    return [words[k] for k in order], [float(np.sqrt(frac[k])) for k in order]


def tissue_words(cs, idx) -> tuple[list[str], list[float]]:
    """``[BOS] tissue : <sentence> ;`` and its values (no task words)."""
    words, values = tissue_sentence(cs, idx)
    return [BOS, TISSUE, ":", *words, ";"], [0.0, 0.0, 0.0, *values, 0.0]


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
