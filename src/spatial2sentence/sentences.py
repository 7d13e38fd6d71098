"""Cell sentences: a cell's markers ranked by scaled expression, highest first.

``z`` is the scaled expression matrix (cells x markers, see :mod:`.normalize`). A sentence keeps the
``top_k`` markers whose value exceeds ``threshold``; a cell with none gets the single word ``nil``.
``present`` (optional, per-marker booleans) restricts sentences to a panel subset: that is how training
simulates images carrying only part of the panel.

Cells that have a phenotype but no marker intensities get the sentence ``phenotype <type-token>``.
"""

from __future__ import annotations

import numpy as np

NIL = "nil"
PHENOTYPE = "phenotype"


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


def cell_sentences(
    z: np.ndarray,
    markers: list[str],
    top_k: int = 8,
    threshold: float | None = 0.0,
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
