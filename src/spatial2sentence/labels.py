"""Values painted on a label mask, and the class-ID mask of predicted cell types: numpy only, so the
plugin can paint results without importing torch on napari's GUI thread."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def paint_labels(mask: np.ndarray, objects, values, fill=0, dtype=None) -> np.ndarray:
    """``values`` painted on ``mask``: pixels of label ``objects[i]`` get ``values[i]``, background and
    labels not in ``objects`` get ``fill``."""
    objects = np.asarray(objects, dtype=np.int64)
    values = np.asarray(values)
    dtype = dtype or values.dtype
    ok = objects > 0
    objects, values = objects[ok], values[ok]
    top = int(mask.max()) if mask.size else 0
    if top <= 4 * mask.size + len(objects):  # a lookup table (the usual case: labels 1..n)
        lut = np.full(max(top, int(objects.max(initial=0))) + 1, fill, dtype=dtype)
        lut[objects] = values
        lut[0] = fill
        return lut[mask]
    # sparse huge label values (a table too big for memory): a sorted search instead
    order = np.argsort(objects)
    flat = mask.ravel()
    pos = np.clip(np.searchsorted(objects[order], flat), 0, max(len(objects) - 1, 0))
    hit = (objects[order][pos] == flat) if len(objects) else np.zeros(flat.shape, bool)
    out = np.where(hit, values[order][pos] if len(objects) else fill, fill)
    return out.astype(dtype).reshape(mask.shape)


def class_ids(cell_types: Sequence, type_labels: Sequence[str]) -> np.ndarray:
    """1-based position of each cell's type in ``type_labels`` (0: no prediction or another label)."""
    code = {t: k for k, t in enumerate(type_labels, start=1)}
    return np.array([code.get(t, 0) if isinstance(t, str) else 0 for t in cell_types], np.int64)


def class_id_mask(mask: np.ndarray, objects, cell_types: Sequence, type_labels: Sequence[str]) -> np.ndarray:
    """The class-ID mask: 0 background (and untyped cells), k = the k-th label of ``type_labels``."""
    dtype = np.uint8 if len(type_labels) < 255 else np.uint16
    return paint_labels(mask, objects, class_ids(cell_types, type_labels), 0, dtype)
