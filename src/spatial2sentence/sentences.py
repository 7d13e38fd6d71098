"""Cell sentences: a cell's markers ranked by scaled expression, highest first.

Two encodings (``SentenceSettings.encoding``):

* ``"ranked"`` (v1, and what every stored model without the setting uses): the ``top_k`` markers whose
  ranking value exceeds ``threshold``, as bare marker words, highest first. It keeps *which* markers are
  high, not *how* high, and drops every marker below the threshold.
* ``"levels"``: every marker whose range value (0-1 between the marker's 1st and 99th training
  percentiles) exceeds ``level_threshold``, highest first, each as ONE word ``MARKER:L``: ``L`` = 1..n is
  the marker's level, from per-marker bin edges learned on the training cells
  (:meth:`~spatial2sentence.normalize.Normalizer.fit_levels`, stored with the model), ``n`` = highest.
  Why: a linear read-out of the ranked words lost 13 points of cell-type accuracy on the CyCIF strips
  against the full marker vector (benchmarks/sentence_encoding.py); level words keep the level.

* ``"values"`` (v2): every marker whose range value exceeds ``level_threshold``, highest first, as bare
  marker words; each word carries its value into the model's embedding (``SentenceSettings.values``,
  :mod:`spatial2sentence.numeric`). Why: on the CyCIF strips, level words (16 bins) memorised: a held-out
  strip read 44% with level words + values against 58% with bare words + values (one fold, same budget);
  the number itself carries the level.

A cell with no word gets the single word ``nil``.
``present`` (optional, per-marker booleans) restricts sentences to a panel subset: that is how training
simulates images carrying only part of the panel.

Cells that have a phenotype but no marker intensities get the sentence ``phenotype <type-token>``.
"""

from __future__ import annotations

import numpy as np

NIL = "nil"
PHENOTYPE = "phenotype"
LEVEL_SEP = ":"
ENCODINGS = ("ranked", "levels", "values")


def type_token(name: str) -> str:
    """The token of a cell-type label (also used by phenotype sentences)."""
    return "T:" + str(name).strip().replace(" ", "_")


def status_token(name: str) -> str:
    """The token of a clinical-status label."""
    return "S:" + str(name).strip().replace(" ", "_")


def rank_markers(
    z: np.ndarray, top_k: int, threshold: float | None, present: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Ranked marker indices of each cell: ``(order, keep)``, both (cells x min(top_k, markers));
    ``order[i, j]`` is the j-th highest marker of cell i and ``keep[i, j]`` says whether it is used."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim == 1:
        z = z[None, :]
    if present is not None:
        z = np.where(np.asarray(present, bool)[None, :] if np.ndim(present) == 1 else present, z, -np.inf)
    k = min(int(top_k), z.shape[1])
    if k == 0:
        return np.zeros((z.shape[0], 0), int), np.zeros((z.shape[0], 0), bool)
    if k < z.shape[1]:
        part = np.argpartition(-z, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(z.shape[1]), (z.shape[0], 1))
    vals = np.take_along_axis(z, part, axis=1)
    # stable ordering: by value descending, ties by marker index
    o = np.argsort(-vals, axis=1, kind="stable")
    order = np.take_along_axis(part, o, axis=1)
    vals = np.take_along_axis(vals, o, axis=1)
    keep = np.isfinite(vals)
    if threshold is not None:
        keep &= vals > threshold
    return order, keep


def level_word(marker: str, level: int) -> str:
    """The word of a marker at a level (``levels`` encoding): ``CD3:7``."""
    return f"{marker}{LEVEL_SEP}{int(level)}"


def word_marker(word: str) -> str:
    """The marker a sentence word names: ``CD3:7`` -> ``CD3``; other words unchanged."""
    head, sep, tail = str(word).rpartition(LEVEL_SEP)
    return head if sep and head and tail.isdigit() else str(word)


def marker_levels(u: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Level 1..n of every value: ``u`` (cells x markers, range scale), ``edges`` (markers x n-1) the inner
    bin edges, ascending per marker; a value equal to an edge goes to the upper bin."""
    u = np.asarray(u, np.float32)
    if u.ndim == 1:
        u = u[None, :]
    e = np.asarray(edges, np.float32)
    return 1 + (u[:, :, None] >= e[None, :, :]).sum(-1)


def level_sentences(
    u: np.ndarray,
    markers: list[str],
    edges: np.ndarray,
    threshold: float = 0.05,
    present: np.ndarray | None = None,
    top_k: int | None = None,
) -> list[list[str]]:
    """``levels`` sentences: every (present) marker with ``u > threshold`` as ``MARKER:L``, highest ``u``
    first (ties by marker index); at most ``top_k`` words when given."""
    u = np.asarray(u, np.float32)
    if u.ndim == 1:
        u = u[None, :]
    k = u.shape[1] if top_k is None else min(int(top_k), u.shape[1])
    order, keep = rank_markers(u, k, threshold, present)
    lev = marker_levels(u, edges)
    names = list(markers)
    out = []
    for i, (o, kk) in enumerate(zip(order, keep)):
        words = [level_word(names[j], lev[i, j]) for j in o[kk]]
        out.append(words if words else [NIL])
    return out


def cell_sentences(
    z: np.ndarray,
    markers: list[str],
    top_k: int,
    threshold: float | None,
    present: np.ndarray | None = None,
) -> list[list[str]]:
    """The sentence (list of marker words) of every cell of ``z``."""
    order, keep = rank_markers(z, top_k, threshold, present)
    names = np.asarray(markers, dtype=object)
    out = []
    for o, k in zip(order, keep):
        words = list(names[o[k]])
        out.append(words if words else [NIL])
    return out


def phenotype_sentence(phenotype: str) -> list[str]:
    """The sentence of a cell known only by its phenotype."""
    return [PHENOTYPE, type_token(phenotype)]
