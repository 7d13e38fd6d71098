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
    pos_idx = np.full((n, s.n_pos), -1, np.int64)
    pos_dist = np.full((n, s.n_pos), np.nan, np.float32)
    neg_idx = np.full((n, s.n_neg), -1, np.int64)
    neg_dist = np.full((n, s.n_neg), np.nan, np.float32)
    if n == 0:
        return Pairs(pos_idx, pos_dist, neg_idx, neg_dist)
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


def _build_sorted(xy, u, gcodes, s: PairSettings, rng):
    """Pairs of cells already sorted by image (indices are positions in this order)."""
    n = len(xy)
    pos_idx = np.full((n, s.n_pos), -1, np.int64)
    pos_dist = np.full((n, s.n_pos), np.nan, np.float32)
    neg_idx = np.full((n, s.n_neg), -1, np.int64)
    neg_dist = np.full((n, s.n_neg), np.nan, np.float32)
    order = np.arange(n)
    bounds = np.flatnonzero(np.diff(np.r_[-1, gcodes, -2]))
    starts, ends = bounds[:-1], bounds[1:]

    # --- neighbourhoods (per image) -------------------------------------------------------------
    k = min(s.pos_k, n - 1)
    nb_idx = np.full((n, max(k, 0)), -1, np.int64)
    nb_dist = np.full((n, max(k, 0)), np.inf, np.float32)
    if k > 0:
        for a, b in zip(starts, ends):
            cells = order[a:b]
            kk = min(k, len(cells) - 1)
            if kk <= 0:
                continue
            tree = cKDTree(xy[cells])
            for c0 in range(0, len(cells), _CHUNK):
                q = cells[c0 : c0 + _CHUNK]
                d, j = tree.query(xy[q], k=kk + 1, distance_upper_bound=s.pos_radius_um)
                d, j = d[:, 1:], j[:, 1:]  # drop self (distance 0 comes first)
                ok = np.isfinite(d)
                jj = np.where(ok, cells[np.minimum(j, len(cells) - 1)], -1)
                nb_idx[q, :kk] = jj
                nb_dist[q, :kk] = np.where(ok, d, np.inf)
        valid = nb_idx >= 0
        sims = np.full(nb_idx.shape, -np.inf, np.float32)
        for c0 in range(0, n, _CHUNK):
            sl = slice(c0, c0 + _CHUNK)
            jj = np.where(valid[sl], nb_idx[sl], 0)
            sims[sl] = np.where(valid[sl], np.einsum("id,ikd->ik", u[sl], u[jj]), -np.inf)
        vs = sims[valid]
        if vs.size:
            sample = vs if vs.size <= 200_000 else rng.choice(vs, 200_000, replace=False)
            pos_thr = float(np.quantile(sample, s.pos_sim_quantile))
            good = valid & (sims >= pos_thr)
            # neighbours come sorted by distance: keep the first n_pos good ones
            rank = np.cumsum(good, axis=1) - 1
            rows, cols = np.nonzero(good & (rank < s.n_pos))
            pos_idx[rows, rank[rows, cols]] = nb_idx[rows, cols]
            pos_dist[rows, rank[rows, cols]] = nb_dist[rows, cols]
        else:
            pos_thr = float("nan")
        del nb_idx, nb_dist, sims, valid
    else:
        pos_thr = float("nan")

    # --- negatives (random candidates of the same image) ----------------------------------------
    if s.n_neg <= 0:
        return pos_idx, pos_dist, neg_idx, neg_dist, pos_thr, float("nan")
    gstart = np.empty(n, np.int64)
    gsize = np.empty(n, np.int64)
    for a, b in zip(starts, ends):
        gstart[order[a:b]] = a
        gsize[order[a:b]] = b - a
    m = max(1, s.neg_candidates)
    # similarity threshold from random same-image pairs
    probe = rng.integers(0, n, min(n, 100_000))
    partner = order[gstart[probe] + rng.integers(0, 1 << 62, len(probe)) % gsize[probe]]
    psims = _rowdot(u[probe], u[partner])
    psims = psims[probe != partner]
    neg_thr = float(np.quantile(psims, s.neg_sim_quantile)) if psims.size else float("nan")
    if not np.isfinite(neg_thr):
        return pos_idx, pos_dist, neg_idx, neg_dist, pos_thr, neg_thr
    filled = np.zeros(n, np.int64)
    relaxed_min = 2.0 * s.pos_radius_um
    for rnd in range(s.neg_rounds + 1):
        todo = np.flatnonzero((filled < s.n_neg) & (gsize > 1))
        if todo.size == 0:
            break
        last = rnd == s.neg_rounds
        for c0 in range(0, len(todo), _CHUNK):
            q = todo[c0 : c0 + _CHUNK]
            cand = order[gstart[q, None] + rng.integers(0, 1 << 62, (len(q), m)) % gsize[q, None]]
            d = np.linalg.norm(xy[cand] - xy[q, None, :], axis=2).astype(np.float32)
            sim = np.einsum("id,ikd->ik", u[q], u[cand])
            ok = (sim <= neg_thr) & (cand != q[:, None])
            ok &= d >= (relaxed_min if last else s.neg_min_dist_um)
            if last:  # farthest first
                srt = np.argsort(-np.where(ok, d, -1), axis=1)
                cand = np.take_along_axis(cand, srt, 1)
                d = np.take_along_axis(d, srt, 1)
                ok = np.take_along_axis(ok, srt, 1)
            # avoid duplicates of already chosen negatives
            for j in range(s.n_neg):
                ok &= cand != neg_idx[q, j : j + 1]
            if s.n_neg > 1:  # a candidate drawn twice in one round counts once
                for j in range(1, m):
                    ok[:, j] &= ~(cand[:, :j] == cand[:, j : j + 1]).any(1)
            rank = np.cumsum(ok, axis=1) - 1 + filled[q, None]
            take = ok & (rank < s.n_neg)
            rows, cols = np.nonzero(take)
            slot = rank[rows, cols]
            neg_idx[q[rows], slot] = cand[rows, cols]
            neg_dist[q[rows], slot] = d[rows, cols]
            filled[q] = np.minimum(s.n_neg, filled[q] + take.sum(1))
    return pos_idx, pos_dist, neg_idx, neg_dist, pos_thr, neg_thr
