"""Per-cell measurement: centroid, area and mean intensity of every channel, in one pass per channel.

The label image is turned once into a compact index (0 = background, 1..n = cells), then the per-cell
sums of a block of channels come from one scatter-add over the pixels (torch's ``index_add_``, which is
multi-threaded and reads the image in place; ``np.bincount`` holds the GIL and converts every channel
to float64 first, which made it 3-4x slower here): no per-cell Python loop and no copy of the image
beyond one block of channels when the pixels are not already float. Results agree with steinbock
(``scipy.ndimage`` / ``skimage.measure.regionprops``): centroids are the mean pixel indices (row = y,
column = x), scaled by the pixel size to um.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import MaskError
from .io import IMCImage
from .io import read_image, read_mask

# Channels summed per scatter-add: bounds the float32 copy made of integer images.
_CHANNEL_BLOCK = 8
# Ids are compacted with np.unique when they are this many times sparser than the pixels (uint32 masks).
_SPARSE_IDS = 4


class NonFiniteWarning(UserWarning):
    """Some pixels are NaN or inf: the affected cells are measured on their finite pixels and flagged."""


@dataclass
class _LabelIndex:
    index: np.ndarray  # per pixel: 0 = background, k = k-th cell (intp, flat)
    ids: np.ndarray  # object id of cell k-1
    counts: np.ndarray  # pixels per cell


def _label_index(mask: np.ndarray) -> _LabelIndex:
    flat = mask.ravel()
    top = int(flat.max())
    if top > _SPARSE_IDS * flat.size:
        ids, inverse = np.unique(flat, return_inverse=True)
        has_background = ids[0] == 0
        index = inverse.astype(np.intp) + (0 if has_background else 1)
        ids = ids[1:] if has_background else ids
        counts = np.bincount(index, minlength=len(ids) + 1)[1:]
        return _LabelIndex(index, ids, counts)
    index = flat.astype(np.intp)
    counts_all = np.bincount(index, minlength=top + 1)
    ids = np.flatnonzero(counts_all)
    ids = ids[ids > 0]
    if len(ids) == top:  # ids are exactly 1..n: the label is already the compact index
        return _LabelIndex(index, ids, counts_all[1:])
    lookup = np.zeros(top + 1, dtype=np.intp)
    lookup[ids] = np.arange(1, len(ids) + 1)
    return _LabelIndex(lookup[index], ids, counts_all[ids])


def _channel_sums(data: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """(n + 1, C) per-label sums of every channel; row 0 is the background."""
    # torch here, not at module level: `s2s measure` refuses a bad file before paying ~1.5 s for it
    # (tests/test_hostile.py::test_header_bomb_is_refused_quickly_with_little_memory times that)
    import torch

    channels = data.shape[0]
    sums = np.empty((n + 1, channels), dtype=np.float64)
    target = torch.from_numpy(index)
    for start in range(0, channels, _CHANNEL_BLOCK):
        block = np.asarray(data[start : start + _CHANNEL_BLOCK]).reshape(-1, index.size)
        if block.dtype not in (np.float32, np.float64):
            block = block.astype(np.float32)
        with warnings.catch_warnings():  # read-only memory maps are only read here
            warnings.simplefilter("ignore", UserWarning)
            source = torch.from_numpy(block)
        acc = torch.zeros(n + 1, block.shape[0], dtype=source.dtype)
        acc.index_add_(0, target, source.T)
        sums[:, start : start + block.shape[0]] = acc.numpy()
    return sums


def measure_cells(
    image: IMCImage | np.ndarray,
    mask: np.ndarray,
    channels: Sequence[str] | None = None,
    pixel_size_um: float | None = None,
    source: str | Path | None = None,
) -> pd.DataFrame:
    """Measure every object of ``mask`` in ``image`` (C, Y, X).

    Returns a table with one row per object id (ascending): ``Object``, ``x``, ``y`` (um), ``area``
    (pixels) and the mean intensity of each channel under its marker name. When the image holds NaN or
    inf pixels the cells touching them are measured on their finite pixels, a ``nonfinite_pixels``
    column counts the skipped pixels per cell, and a :class:`NonFiniteWarning` names the image.
    """
    if isinstance(image, IMCImage):
        data = image.data
        channels = image.channels if channels is None else list(channels)
        pixel_size_um = image.pixel_size_um if pixel_size_um is None else pixel_size_um
        source = source or image.path or image.name
    else:
        data = np.asarray(image)
        if data.ndim == 2:
            data = data[None]
        channels = [f"channel_{i}" for i in range(data.shape[0])] if channels is None else list(channels)
    pixel_size_um = 1.0 if pixel_size_um is None else float(pixel_size_um)
    if len(channels) != data.shape[0]:
        raise ValueError(f"{len(channels)} channel names for {data.shape[0]} channels")
    mask = np.asarray(mask)
    if mask.shape != data.shape[1:]:
        raise MaskError(source, f"mask shape {mask.shape} differs from image shape {data.shape[1:]}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise MaskError(source, f"mask is not integer (pixel type {mask.dtype})")
    labels = _label_index(mask)
    if len(labels.ids) == 0:
        raise MaskError(source, "mask contains no cells (every pixel is 0)")

    n = len(labels.ids)
    counts = labels.counts.astype(np.float64)
    height, width = mask.shape
    # Centroids from row and column sums: bincount over the flat index with the pixel's row or column.
    rows = np.bincount(labels.index, weights=np.repeat(np.arange(height, dtype=np.float64), width), minlength=n + 1)[1:]
    cols = np.bincount(labels.index, weights=np.tile(np.arange(width, dtype=np.float64), height), minlength=n + 1)[1:]

    table = {
        "Object": labels.ids.astype(np.int64),
        "x": cols / counts * pixel_size_um,
        "y": rows / counts * pixel_size_um,
        "area": labels.counts.astype(np.int64),
    }
    nonfinite = np.zeros(n, dtype=np.int64)
    bad_background = False
    all_sums = _channel_sums(data, labels.index, n)
    for c, name in enumerate(channels):
        sums = all_sums[:, c]
        if not np.isfinite(sums).all():
            values = np.asarray(data[c]).ravel()
            # Rare path: recount this channel on its finite pixels only.
            finite = np.isfinite(values)
            bad_background |= not np.isfinite(sums[0])
            sums = np.bincount(labels.index[finite], weights=values[finite], minlength=n + 1)
            valid = np.bincount(labels.index[finite], minlength=n + 1)[1:]
            nonfinite += labels.counts - valid
            with np.errstate(invalid="ignore", divide="ignore"):
                table[name] = sums[1:] / valid
        else:
            table[name] = sums[1:] / counts
    cells = pd.DataFrame(table)
    if nonfinite.any() or bad_background:
        cells["nonfinite_pixels"] = nonfinite
        warnings.warn(
            f"{source}: image holds NaN or inf pixels; {int((nonfinite > 0).sum())} cells measured on "
            "their finite pixels only (column 'nonfinite_pixels')",
            NonFiniteWarning,
            stacklevel=2,
        )
    return cells


def measure_image(image, mask, panel=None) -> tuple[IMCImage, pd.DataFrame]:
    """Read (when given paths) and measure an image with its mask: ``(IMCImage, cells table)``.

    ``image`` is an :class:`IMCImage` or a path, ``mask`` an array or a path; the path the CLI,
    prediction and explanations all share.
    """
    if not isinstance(image, IMCImage):
        image = read_image(image, panel=panel)
    if not hasattr(mask, "shape"):
        mask = read_mask(mask, shape=image.shape, image_path=image.path)
    if not np.any(mask):
        raise MaskError(image.name, "empty image: the mask holds no cells")
    return image, measure_cells(image, mask)
