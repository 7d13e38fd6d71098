"""Normalisation of per-cell marker means: ``arcsinh(x / cofactor)``, then per-marker scaling.

The per-marker statistics (a robust centre and scale of the arcsinh values) are learned on the training
cells and stored with the model (``s2s_config.json``), keyed by canonical marker name, so that a panel
carrying only some of the model's markers is scaled with the right statistics.

``scaling`` (a setting):

* ``"model"``: z = (v - centre_m) / scale_m with the training statistics (default);
* ``"image"``: the statistics are re-estimated on each image being read (robust to batch effects between
  acquisitions, but shifts the values of images dominated by one cell type).

``lo`` / ``hi`` are the 1st and 99th percentiles of the training cells' z per marker. Sentences may rank
markers by their position in that range (``SentenceSettings.rank_by = "range"``, a 0-1 scale per marker as in
the usual IMC "censor at the 99th percentile, scale to 0-1" normalisation) instead of by z. Why: z is
centred on the median cell, and in tissue dominated by one cell type (acinar cells are over half of the
pancreas) that type's own markers sit near z = 0, so its sentences were ranked by noise; on held-out
semi-synthetic donors a linear model on the ranked words reaches 0.847 with z ranking (top 8), 0.873 with
range ranking (top 12) (benchmarks/sentence_encoding.py).

``levels`` (for ``SentenceSettings.encoding = "levels"``): per marker, the inner edges of the level bins
on that range scale, learned on the training cells by :meth:`Normalizer.fit_levels` and stored with the
rest (empty in models saved before levels existed). ``"quantile"`` bins put equal numbers of the training
cells above the presence threshold into each level, so a marker whose positive cells crowd near the
bottom of its range still gets distinct levels; ``"equal"`` bins split [threshold, 1] evenly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import S2SInputError


@dataclass
class Normalizer:
    cofactor: float = 1.0
    scaling: str = "model"  # "model" or "image"
    clip: float = 5.0
    centre: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    lo: dict[str, float] = field(default_factory=dict)  # 1st percentile of training z per marker
    hi: dict[str, float] = field(default_factory=dict)  # 99th percentile of training z per marker
    # inner edges (n_levels - 1, ascending) of each marker's level bins on the range scale
    levels: dict[str, list[float]] = field(default_factory=dict)

    @staticmethod
    def _robust(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centre = np.nanmedian(v, axis=0)
        lo, hi = np.nanpercentile(v, [5, 95], axis=0)
        std = np.nanstd(v, axis=0)
        scale = np.maximum.reduce([(hi - lo) / 3.29, std, np.full_like(std, 1e-3)])
        return centre, scale

    def transform_raw(self, x: np.ndarray) -> np.ndarray:
        return np.arcsinh(np.asarray(x, dtype=np.float64) / self.cofactor)

    def fit(self, values: np.ndarray, markers: list[str]) -> "Normalizer":
        """Learn per-marker centre and scale from raw values (cells x markers, canonical names)."""
        v = self.transform_raw(values)
        centre, scale = self._robust(v)
        self.centre = {m: float(c) for m, c in zip(markers, centre)}
        self.scale = {m: float(s) for m, s in zip(markers, scale)}
        z = np.clip((v - centre) / scale, -self.clip, self.clip)  # NaN (marker not measured) stays NaN
        lo, hi = np.nanpercentile(z, [1, 99], axis=0)
        self.lo = {m: float(a) for m, a in zip(markers, lo)}
        self.hi = {m: float(b) for m, b in zip(markers, hi)}
        return self

    def range_bounds(self, markers: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-marker (lo, hi) of the training z (0 and 1 for markers without them: z unchanged)."""
        # a marker never measured in training has NaN percentiles: leave its z unchanged too
        lo = np.nan_to_num(np.array([self.lo.get(m, 0.0) for m in markers], np.float32), nan=0.0)
        hi = np.nan_to_num(np.array([self.hi.get(m, 1.0) for m in markers], np.float32), nan=1.0)
        return lo, np.maximum(hi, lo + 1e-3)

    def range_values(self, values: np.ndarray, markers: list[str]) -> np.ndarray:
        """Raw values -> the 0-1 range scale (z between the 1st and 99th training percentiles)."""
        lo, hi = self.range_bounds(markers)
        return (self.transform(values, markers) - lo) / (hi - lo)

    def fit_levels(self, values: np.ndarray, markers: list[str], n_levels: int = 16, threshold: float = 0.05,
                   bins: str = "equal") -> "Normalizer":
        """Learn each marker's level bin edges from raw training values (after :meth:`fit`).

        ``quantile``: the (1/n .. (n-1)/n) quantiles of the range values of the cells above ``threshold``
        (a marker with fewer than 5 such cells per level falls back to equal bins); ``equal``: even bins of
        [threshold, 1]."""
        if bins not in ("quantile", "equal"):
            raise S2SInputError("sentence settings", f"unknown level_bins {bins!r} (use 'quantile' or 'equal')")
        n = max(1, int(n_levels))
        equal = np.linspace(threshold, 1.0, n + 1)[1:-1]
        u = self.range_values(values, markers) if len(values) else np.zeros((0, len(markers)), np.float32)
        raw = np.asarray(values, np.float64)
        self.levels = {}
        for j, m in enumerate(markers):
            col = u[np.isfinite(raw[:, j]), j] if raw.size else u[:, j]
            pos = col[col > threshold]
            if bins == "quantile" and pos.size >= 5 * n:
                e = np.quantile(pos, np.linspace(0, 1, n + 1)[1:-1])
            else:
                e = equal
            self.levels[m] = [float(x) for x in np.maximum.accumulate(np.asarray(e, np.float64))]
        return self

    def level_edges(self, markers: list[str], n_levels: int | None = None,
                    threshold: float = 0.05) -> np.ndarray:
        """(markers x n-1) level edges; markers without learned edges get equal bins of [threshold, 1]."""
        n = n_levels or (len(next(iter(self.levels.values()))) + 1 if self.levels else 8)
        equal = np.linspace(threshold, 1.0, n + 1)[1:-1]
        rows = [self.levels.get(m) for m in markers]
        return np.array([r if r is not None and len(r) == n - 1 else equal for r in rows],
                        np.float32).reshape(len(markers), n - 1)

    def transform(self, values: np.ndarray, markers: list[str]) -> np.ndarray:
        """Scaled values (float32, cells x markers). Markers without statistics are scaled on the data."""
        v = self.transform_raw(values)
        if v.shape[0] == 0:
            return v.astype(np.float32)
        if self.scaling == "image" or not self.centre:
            centre, scale = self._robust(v) if v.shape[0] > 1 else (v[0], np.ones(v.shape[1]))
        else:
            own_c, own_s = self._robust(v) if v.shape[0] > 1 else (v[0], np.ones(v.shape[1]))
            centre = np.array([self.centre.get(m, own_c[i]) for i, m in enumerate(markers)])
            scale = np.array([self.scale.get(m, own_s[i]) for i, m in enumerate(markers)])
        z = (v - centre) / scale
        z = np.nan_to_num(z, nan=0.0, posinf=self.clip, neginf=-self.clip)
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(**d)
