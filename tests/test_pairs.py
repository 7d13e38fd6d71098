"""Pairs: positives adjacent and similar, negatives distant and dissimilar, sparse and seeded."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from spatial2sentence.pairs import build_pairs, unit_rows
from spatial2sentence.settings import PairSettings

from conftest import TEST_DATA as DATA  # noqa: E402


def _tissue(n=4000, seed=0):
    """Cells on a 600 x 600 um field with 4 spatial domains of distinct expression."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 600, (n, 2))
    dom = (xy[:, 0] > 300).astype(int) * 2 + (xy[:, 1] > 300).astype(int)
    v = np.eye(6)[dom] * 3 + rng.normal(0, 0.5, (n, 6))
    return xy, v, dom


def _cos(u, i, j):
    return np.einsum("ij,ij->i", u[i], u[j])


def test_positives_near_and_similar_negatives_far_and_dissimilar():
    xy, v, dom = _tissue()
    s = PairSettings(n_pos=3, n_neg=2)
    p = build_pairs(xy, v, settings=s)
    u = unit_rows(v)
    rows, cols = np.nonzero(p.pos_idx >= 0)
    j = p.pos_idx[rows, cols]
    d = np.linalg.norm(xy[rows] - xy[j], axis=1)
    assert len(rows) > 0.8 * len(xy) * 3
    assert (d <= s.pos_radius_um + 1e-6).all()
    np.testing.assert_allclose(d, p.pos_dist[rows, cols], rtol=1e-5)
    assert (_cos(u, rows, j) >= p.pos_threshold - 1e-6).all()
    assert (dom[rows] == dom[j]).mean() > 0.95
    rows, cols = np.nonzero(p.neg_idx >= 0)
    j = p.neg_idx[rows, cols]
    assert len(rows) > 0.95 * len(xy) * 2
    assert (np.linalg.norm(xy[rows] - xy[j], axis=1) >= s.neg_min_dist_um - 1e-6).all()
    assert (_cos(u, rows, j) <= p.neg_threshold + 1e-6).all()
    assert (dom[rows] != dom[j]).mean() > 0.95
    both = (p.neg_idx >= 0).all(1)
    assert (p.neg_idx[both, 0] != p.neg_idx[both, 1]).all()
    assert (p.pos_idx != np.arange(len(xy))[:, None]).all() and (p.neg_idx != np.arange(len(xy))[:, None]).all()


def test_pairs_stay_within_images_and_are_seeded():
    xy, v, _ = _tissue(2000)
    groups = np.where(np.arange(2000) < 1000, "a", "b")
    p1 = build_pairs(xy, v, groups, PairSettings(seed=3))
    p2 = build_pairs(xy, v, groups, PairSettings(seed=3))
    for name in ("pos_idx", "neg_idx"):
        idx = getattr(p1, name)
        np.testing.assert_array_equal(idx, getattr(p2, name))
        r, c = np.nonzero(idx >= 0)
        assert (groups[r] == groups[idx[r, c]]).all()
    p3 = build_pairs(xy, v, groups, PairSettings(seed=4))
    assert not np.array_equal(p1.neg_idx, p3.neg_idx)


def test_one_and_two_cell_images():
    p = build_pairs(np.zeros((1, 2)), np.ones((1, 3)))
    assert (p.pos_idx == -1).all() and (p.neg_idx == -1).all()
    p = build_pairs(np.array([[0.0, 0.0], [5.0, 0.0]]), np.array([[1.0, 0.0], [0.9, 0.1]]))
    assert p.pos_idx.shape == (2, 2) and p.neg_idx.shape == (2, 1)
    p = build_pairs(np.zeros((0, 2)), np.zeros((0, 3)))
    assert p.pos_idx.shape == (0, 2)


def test_memory_is_sparse():
    """50,000 cells: peak Python-tracked memory far below one n x n float32 matrix (10 GB)."""
    xy, v, _ = _tissue(50_000)
    tracemalloc.start()
    build_pairs(xy * 5, v)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 150e6


def test_real_cycif_pairs():
    """scimap's real CyCIF image: positives are close and more similar than negatives."""
    df = pd.read_csv(DATA / "scimap_cycif" / "example_data.csv")
    markers = [c for c in df.columns[1:49] if not c.startswith(("DNA", "BG"))]
    z = np.arcsinh(df[markers].to_numpy(float) / 100.0)
    z = (z - z.mean(0)) / z.std(0)
    xy = df[["X_position", "Y_position"]].to_numpy(float)
    s = PairSettings(pos_radius_um=40.0, neg_min_dist_um=200.0)
    p = build_pairs(xy, z, settings=s)
    u = unit_rows(z)
    r, c = np.nonzero(p.pos_idx >= 0)
    pos_sim = _cos(u, r, p.pos_idx[r, c])
    r2, c2 = np.nonzero(p.neg_idx >= 0)
    neg_sim = _cos(u, r2, p.neg_idx[r2, c2])
    assert len(r) > 0.5 * len(df) and len(r2) > 0.9 * len(df)
    assert pos_sim.mean() > 0.3 > neg_sim.mean()
    assert (np.linalg.norm(xy[r2] - xy[p.neg_idx[r2, c2]], axis=1) >= 200.0 - 1e-6).all()


@pytest.mark.parametrize("n_neg", [0, 3])
def test_counts_are_settings(n_neg):
    xy, v, _ = _tissue(500)
    p = build_pairs(xy, v, settings=PairSettings(n_pos=1, n_neg=n_neg))
    assert p.pos_idx.shape == (500, 1) and p.neg_idx.shape == (500, n_neg)
