"""Spatial neighbour graphs from cell centroids, built on a KD-tree in O(n log n).

Graphs are returned as edge lists (``src``, ``dst``, ``distance``) of row positions in the input, both
directions included and self-loops excluded, so a million cells never need an n x n matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass
class NeighborGraph:
    src: np.ndarray  # int64 row positions
    dst: np.ndarray
    distance: np.ndarray  # float64, in the centroids' unit (um)

    def __len__(self) -> int:
        return len(self.src)

    def neighbors_of(self, i: int) -> np.ndarray:
        return self.dst[self.src == i]


def _as_points(xy) -> np.ndarray:
    points = np.asarray(xy, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"centroids must have shape (n, 2), got {points.shape}")
    return points


def knn_graph(xy, k: int, tree: cKDTree | None = None) -> NeighborGraph:
    """Each cell's ``k`` nearest other cells (fewer when there are fewer cells)."""
    points = _as_points(xy)
    n = len(points)
    k = min(int(k), n - 1)
    if k <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return NeighborGraph(empty, empty.copy(), np.zeros(0))
    tree = tree or cKDTree(points)
    dist, idx = tree.query(points, k=k + 1)
    # The nearest hit is normally the cell itself; drop it by identity, not by position, so that
    # cells sharing a centroid still get k other neighbours.
    src = np.repeat(np.arange(n), k + 1).reshape(n, k + 1)
    keep = idx != src
    keep[keep.sum(axis=1) > k, -1] = False
    return NeighborGraph(src[keep].astype(np.int64), idx[keep].astype(np.int64), dist[keep])
