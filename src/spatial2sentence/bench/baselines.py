"""Classical baselines for the accuracy benchmark (``s2s benchmark``).

Features of a cell (computed per image, never across images):

* marker data: its normalised marker means (``arcsinh(x / cofactor)`` then the robust per-marker
  scaling of :class:`~spatial2sentence.normalize.Normalizer`, fitted on the training cells only), and for
  the ``*_neighbors`` methods also the mean of those values over its ``k`` nearest cells;
* phenotype-only data (cells with a type but no intensities): a one-hot phenotype, and for the
  ``*_neighbors`` methods the phenotype composition of its ``k`` nearest cells.

Methods: ``logreg`` (multinomial logistic regression on the cell's own features), ``logreg_neighbors``
(own + neighbourhood), ``hgb_neighbors`` (sklearn ``HistGradientBoostingClassifier`` on own +
neighbourhood) and, for clinical status, ``composition_logreg`` (logistic regression on each image's
cell-type composition). Per-cell clinical-status probabilities are turned into one call per image by the
mean log-probability over the image's cells (as :mod:`spatial2sentence.predict` does for the LM).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..neighbors import knn_graph
from ..normalize import Normalizer


def neighbour_mean(values: np.ndarray, xy: np.ndarray, images: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``values`` over each cell's ``k`` nearest other cells of the same image (own value for a
    cell alone in its image)."""
    out = np.array(values, dtype=np.float32, copy=True)
    for im in pd.unique(images):
        sel = np.flatnonzero(images == im)
        if sel.size < 2:
            continue
        g = knn_graph(xy[sel], k)
        acc = np.zeros((sel.size, values.shape[1]), np.float64)
        np.add.at(acc, g.src, values[sel][g.dst])
        cnt = np.bincount(g.src, minlength=sel.size).astype(np.float64)
        out[sel] = (acc / np.maximum(cnt, 1)[:, None]).astype(np.float32)
    return out


class FeatureMaker:
    """Fitted on training cells; ``transform`` gives (own, neighbourhood) feature blocks."""

    def __init__(self, markers: list[str], phenotype_col: str | None, k: int = 10, cofactor: float = 1.0):
        self.markers = list(markers)
        self.phenotype_col = phenotype_col
        self.k = k
        self.cofactor = cofactor
        self.norm: Normalizer | None = None
        self.classes: list[str] = []

    def fit(self, df: pd.DataFrame) -> "FeatureMaker":
        if self.markers:
            self.norm = Normalizer(cofactor=self.cofactor).fit(df[self.markers].to_numpy(np.float64), self.markers)
        else:
            self.classes = sorted(df[self.phenotype_col].astype(str).unique())
        return self

    def own(self, df: pd.DataFrame) -> np.ndarray:
        if self.markers:
            return self.norm.transform(df[self.markers].to_numpy(np.float64), self.markers)
        idx = {c: j for j, c in enumerate(self.classes)}
        codes = df[self.phenotype_col].astype(str).map(idx).fillna(-1).to_numpy(int)
        out = np.zeros((len(df), len(self.classes)), np.float32)
        ok = codes >= 0
        out[np.flatnonzero(ok), codes[ok]] = 1.0
        return out

    def transform(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        own = self.own(df)
        nb = neighbour_mean(own, df[["x", "y"]].to_numpy(np.float64), df["image"].astype(str).to_numpy(), self.k)
        return own, nb


def make_classifier(method: str, seed: int):
    if method in ("logreg", "logreg_neighbors", "composition_logreg"):
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))
    if method == "hgb_neighbors":
        # l2_regularization=1: without it, boosting diverged on rare classes (a class of 5 cells among
        # 40,000) and scored below logistic regression (seen on the semi-synthetic data, seed 0, fold 1)
        return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=31,
                                              l2_regularization=1.0, early_stopping=False, random_state=seed)
    raise ValueError(method)


def features_for(method: str, own: np.ndarray, nb: np.ndarray) -> np.ndarray:
    return own if method == "logreg" else np.hstack([own, nb])


def fit_predict_proba(method: str, X_train, y_train, X_test, labels: list[str], seed: int,
                      max_train: int | None = None) -> np.ndarray:
    """Class probabilities (n_test x len(labels)); classes absent from training get probability 0."""
    y_train = np.asarray(y_train).astype(str)
    if max_train is not None and len(y_train) > max_train:
        rng = np.random.default_rng(seed + 101)
        sel = np.sort(rng.choice(len(y_train), max_train, replace=False))
        X_train, y_train = X_train[sel], y_train[sel]
    out = np.zeros((len(X_test), len(labels)), np.float64)
    uniq = np.unique(y_train)
    col = {c: j for j, c in enumerate(labels)}
    if len(uniq) == 1:
        out[:, col[uniq[0]]] = 1.0
        return out
    clf = make_classifier(method, seed)
    clf.fit(X_train, y_train)
    p = clf.predict_proba(X_test)
    for j, c in enumerate(clf.classes_):
        out[:, col[str(c)]] = p[:, j]
    return out


def image_vote(proba: np.ndarray, images: np.ndarray) -> dict:
    """Per image: the mean log-probability over its cells, argmax index."""
    res = {}
    lp = np.log(np.clip(proba, 1e-12, 1.0))
    for im in pd.unique(images):
        sel = images == im
        res[im] = int(np.argmax(lp[sel].mean(0)))
    return res


def composition(types: np.ndarray, images: np.ndarray, classes: list[str]) -> tuple[list, np.ndarray]:
    """Fraction of each cell type per image: (image ids, matrix)."""
    idx = {c: j for j, c in enumerate(classes)}
    ims = list(pd.unique(images))
    mat = np.zeros((len(ims), len(classes)))
    pos = {im: r for r, im in enumerate(ims)}
    for im, t in zip(images, types):
        j = idx.get(str(t))
        if j is not None:
            mat[pos[im], j] += 1
    mat /= np.maximum(mat.sum(1, keepdims=True), 1)
    return ims, mat
