"""Positive and negative partners of every cell, computed sparsely (never an n x n matrix).

* **Positives**: spatially adjacent AND expression-similar. For each cell, its ``pos_k`` nearest
  neighbours (``scipy.spatial.cKDTree``) within ``pos_radius_um`` whose cosine similarity of scaled
  expression vectors is at least the ``pos_sim_quantile`` quantile of all neighbour-pair similarities;
  the ``n_pos`` nearest of those are kept.
* **Negatives**: distant AND dissimilar. ``neg_candidates`` cells of the same image are drawn at random
  (seeded) per anchor and round; a candidate qualifies when it lies at least ``neg_min_dist_um`` away and
  its cosine similarity is at most the ``neg_sim_quantile`` quantile of random-pair similarities. After
  ``neg_rounds`` rounds, anchors still short of negatives accept qualifying-by-similarity candidates at
  least ``2 x pos_radius_um`` away (small images), farthest first.

Memory is O(n x (pos_k + neg_candidates)) in chunks; time is dominated by the KD-tree (n log n).
Missing partners are ``-1`` (a one-cell image has none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .settings import PairSettings

_CHUNK = 100_000


@dataclass
class Pairs:
    """Partner indices (into the cells given) and their distances; ``-1`` / ``nan`` when missing."""

    pos_idx: np.ndarray  # (n, n_pos) int64
    pos_dist: np.ndarray  # (n, n_pos) float32, um
    neg_idx: np.ndarray  # (n, n_neg) int64
    neg_dist: np.ndarray  # (n, n_neg) float32, um
    pos_threshold: float = float("nan")
    neg_threshold: float = float("nan")


def unit_rows(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(n, 1e-6)


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def build_pairs(
    xy: np.ndarray,
    vectors: np.ndarray,
    groups: np.ndarray | None = None,
    settings: PairSettings | None = None,
    seed: int | None = None,
) -> Pairs:
    """Partners of every cell. ``xy``: (n, 2) positions in um; ``vectors``: (n, d) scaled expression
    (or one-hot phenotypes); ``groups``: image of each cell (partners never cross images)."""
    s = settings or PairSettings()
    rng = np.random.default_rng(s.seed if seed is None else seed)
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    u = unit_rows(vectors)
    if n == 0:
        return Pairs(*_no_partners(n, s.n_pos), *_no_partners(n, s.n_neg))
    if groups is None:
        gcodes = np.zeros(n, np.int64)
    else:
        _, gcodes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    # work on cells sorted by image, then spatially (rows of tiles): neighbours sit close in memory,
    # which makes the KD-tree queries and the vector gathers several times faster at scale
    tile = max(float(s.pos_radius_um), 1.0)
    perm = np.lexsort((xy[:, 0], np.floor(xy[:, 1] / tile), gcodes))
    res = _build_sorted(xy[perm], u[perm], gcodes[perm], s, rng)
    out = []
    for idx, dist in ((res[0], res[1]), (res[2], res[3])):
        full_idx = np.full_like(idx, -1)
        full_idx[perm] = np.where(idx >= 0, perm[np.maximum(idx, 0)], -1)
        full_dist = np.empty_like(dist)
        full_dist[perm] = dist
        out += [full_idx, full_dist]
    return Pairs(*out, pos_threshold=res[4], neg_threshold=res[5])


def _no_partners(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances of ``k`` partner slots for ``n`` cells, all missing (``-1`` / ``nan``)."""
    return np.full((n, k), -1, np.int64), np.full((n, k), np.nan, np.float32)


def _build_sorted(xy, u, gcodes, s: PairSettings, rng):
    """Pairs of cells already sorted by image (indices are positions in this order)."""
    n = len(xy)
    pos_idx, pos_dist = _no_partners(n, s.n_pos)
    neg_idx, neg_dist = _no_partners(n, s.n_neg)
    # each image is one run [start, end) of the sorted cells
    bounds = np.flatnonzero(np.diff(np.r_[-1, gcodes, -2]))
    runs = list(zip(bounds[:-1], bounds[1:]))
    pos_thr = _fill_positives(xy, u, runs, s, rng, pos_idx, pos_dist)
    if s.n_neg <= 0:
        return pos_idx, pos_dist, neg_idx, neg_dist, pos_thr, float("nan")
    neg_thr = _fill_negatives(xy, u, runs, s, rng, neg_idx, neg_dist)
    return pos_idx, pos_dist, neg_idx, neg_dist, pos_thr, neg_thr


def _place_first(ok, cand, dist, anchors, filled, k: int, out_idx, out_dist) -> np.ndarray:
    """Write each anchor's qualifying candidates (``ok``), in column order, into its free partner slots
    (those after its ``filled`` ones, up to ``k``); returns how many each anchor took."""
    rank = np.cumsum(ok, axis=1) - 1 + filled[:, None]
    take = ok & (rank < k)
    rows, cols = np.nonzero(take)
    slot = rank[rows, cols]
    out_idx[anchors[rows], slot] = cand[rows, cols]
    out_dist[anchors[rows], slot] = dist[rows, cols]
    return take.sum(1)


# --- positives ----------------------------------------------------------------------------------
def _fill_positives(xy, u, runs, s: PairSettings, rng, pos_idx, pos_dist) -> float:
    """Fill the positive partners in place; returns the similarity threshold (``nan`` without any
    neighbour pair)."""
    n = len(xy)
    k = min(s.pos_k, n - 1)
    if k <= 0:
        return float("nan")
    nb_idx, nb_dist = _neighbours(xy, runs, k, s.pos_radius_um)
    valid = nb_idx >= 0
    sims = _neighbour_similarities(u, nb_idx, valid)
    vs = sims[valid]
    if not vs.size:
        return float("nan")
    # a subsample bounds the quantile's cost on large images
    sample = vs if vs.size <= 200_000 else rng.choice(vs, 200_000, replace=False)
    pos_thr = float(np.quantile(sample, s.pos_sim_quantile))
    # neighbours come sorted by distance: the first n_pos good ones are the nearest
    _place_first(valid & (sims >= pos_thr), nb_idx, nb_dist, np.arange(n), np.zeros(n, np.int64), s.n_pos,
                 pos_idx, pos_dist)
    return pos_thr


def _neighbours(xy, runs, k: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's ``k`` nearest other cells of its image within ``radius`` (nearest first) and their
    distances; ``-1`` / ``inf`` where there are fewer."""
    n = len(xy)
    nb_idx = np.full((n, k), -1, np.int64)
    nb_dist = np.full((n, k), np.inf, np.float32)
    for a, b in runs:
        cells = np.arange(a, b)
        kk = min(k, len(cells) - 1)
        if kk <= 0:
            continue
        tree = cKDTree(xy[cells])
        for c0 in range(0, len(cells), _CHUNK):
            q = cells[c0 : c0 + _CHUNK]
            d, j = tree.query(xy[q], k=kk + 1, distance_upper_bound=radius)
            d, j = d[:, 1:], j[:, 1:]  # drop self (distance 0 comes first)
            ok = np.isfinite(d)
            jj = np.where(ok, cells[np.minimum(j, len(cells) - 1)], -1)
            nb_idx[q, :kk] = jj
            nb_dist[q, :kk] = np.where(ok, d, np.inf)
    return nb_idx, nb_dist


def _neighbour_similarities(u, nb_idx, valid) -> np.ndarray:
    """Cosine similarity of every cell to each of its neighbours (``-inf`` for missing ones), in chunks
    so the gathered neighbour vectors stay small."""
    sims = np.full(nb_idx.shape, -np.inf, np.float32)
    for c0 in range(0, len(u), _CHUNK):
        sl = slice(c0, c0 + _CHUNK)
        jj = np.where(valid[sl], nb_idx[sl], 0)
        sims[sl] = np.where(valid[sl], np.einsum("id,ikd->ik", u[sl], u[jj]), -np.inf)
    return sims


# --- negatives (random candidates of the same image) --------------------------------------------
def _fill_negatives(xy, u, runs, s: PairSettings, rng, neg_idx, neg_dist) -> float:
    """Fill the negative partners in place; returns the similarity threshold (``nan``: none drawn)."""
    n = len(xy)
    gstart = np.empty(n, np.int64)
    gsize = np.empty(n, np.int64)
    for a, b in runs:
        gstart[a:b] = a
        gsize[a:b] = b - a
    neg_thr = _negative_threshold(u, gstart, gsize, s.neg_sim_quantile, rng)
    if not np.isfinite(neg_thr):
        return neg_thr
    filled = np.zeros(n, np.int64)
    for rnd in range(s.neg_rounds + 1):
        todo = np.flatnonzero((filled < s.n_neg) & (gsize > 1))
        if todo.size == 0:
            break
        for c0 in range(0, len(todo), _CHUNK):
            q = todo[c0 : c0 + _CHUNK]
            took = _draw_negatives(q, xy, u, gstart, gsize, s, rng, neg_thr, rnd == s.neg_rounds, filled,
                                   neg_idx, neg_dist)
            filled[q] = np.minimum(s.n_neg, filled[q] + took)
    return neg_thr


def _same_image_draws(q, count, gstart, gsize, rng) -> np.ndarray:
    """``count`` random cells of the image of each cell ``q`` (uniform over the image, self included)."""
    return gstart[q] + rng.integers(0, 1 << 62, count) % gsize[q]


def _negative_threshold(u, gstart, gsize, quantile: float, rng) -> float:
    """The ``quantile`` of cosine similarities of random same-image pairs."""
    n = len(u)
    probe = rng.integers(0, n, min(n, 100_000))
    partner = _same_image_draws(probe, len(probe), gstart, gsize, rng)
    psims = _rowdot(u[probe], u[partner])
    psims = psims[probe != partner]
    return float(np.quantile(psims, quantile)) if psims.size else float("nan")


def _draw_negatives(q, xy, u, gstart, gsize, s: PairSettings, rng, neg_thr, last, filled, neg_idx,
                    neg_dist) -> np.ndarray:
    """One round of random candidates for anchors ``q``: the qualifying ones go into their free slots;
    returns how many each anchor took. The ``last`` round relaxes the distance (small images) and takes
    the farthest first."""
    m = max(1, s.neg_candidates)
    cand = _same_image_draws(q[:, None], (len(q), m), gstart, gsize, rng)
    d = np.linalg.norm(xy[cand] - xy[q, None, :], axis=2).astype(np.float32)
    sim = np.einsum("id,ikd->ik", u[q], u[cand])
    ok = (sim <= neg_thr) & (cand != q[:, None])
    ok &= d >= (2.0 * s.pos_radius_um if last else s.neg_min_dist_um)
    if last:
        srt = np.argsort(-np.where(ok, d, -1), axis=1)
        cand = np.take_along_axis(cand, srt, 1)
        d = np.take_along_axis(d, srt, 1)
        ok = np.take_along_axis(ok, srt, 1)
    _drop_repeats(ok, cand, neg_idx[q])
    return _place_first(ok, cand, d, q, filled[q], s.n_neg, neg_idx, neg_dist)


def _drop_repeats(ok, cand, chosen) -> None:
    """Clear ``ok`` (in place) for candidates an anchor already has (``chosen``) and, with more than one
    slot, for a candidate's repeats within one round: a partner counts once."""
    for j in range(chosen.shape[1]):
        ok &= cand != chosen[:, j : j + 1]
    if chosen.shape[1] > 1:
        for j in range(1, cand.shape[1]):
            ok[:, j] &= ~(cand[:, :j] == cand[:, j : j + 1]).any(1)
