"""Pixel preprocessing shared with the IMC ecosystem."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter


def filter_hot_pixels(data: np.ndarray, threshold: float = 50.0) -> np.ndarray:
    """steinbock's hot-pixel filter: a pixel exceeding the maximum of its 8 neighbours by more than
    ``threshold`` is set to that maximum. ``data`` is (C, Y, X); a new array is returned.

    Same footprint and border mode ("mirror") as steinbock, so filtered ``.mcd`` pixels equal the TIFFs
    steinbock writes.
    """
    footprint = np.ones((1, 3, 3), dtype=bool)
    footprint[0, 1, 1] = False
    neighbour_max = maximum_filter(data, footprint=footprint, mode="mirror")
    return np.where(data - neighbour_max > threshold, neighbour_max, data)
