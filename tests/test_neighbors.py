import numpy as np
from scipy.spatial.distance import cdist

from spatial2sentence.neighbors import knn_graph


def test_knn_graph_matches_brute_force(rng):
    xy = rng.random((300, 2)) * 100
    graph = knn_graph(xy, k=5)
    full = cdist(xy, xy)
    np.fill_diagonal(full, np.inf)
    expected = np.sort(np.argsort(full, axis=1)[:, :5], axis=1)
    got = np.sort(graph.dst.reshape(300, 5), axis=1)
    assert (graph.src.reshape(300, 5) == np.arange(300)[:, None]).all()
    assert (got == expected).all()
    np.testing.assert_allclose(graph.distance, full[graph.src, graph.dst])


def test_knn_graph_duplicate_points_and_small_n():
    xy = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]])
    graph = knn_graph(xy, k=5)
    assert len(graph) == 6  # k capped at n - 1
    assert not (graph.src == graph.dst).any()
    assert len(knn_graph(xy[:1], k=3)) == 0
