"""Normalisation of per-cell marker means: ``arcsinh(x / cofactor)``, then per-marker scaling.

The per-marker statistics (a robust centre and scale of the arcsinh values) are learned on the training
cells and stored with the model (``s2s_config.json``), keyed by canonical marker name, so that a panel
carrying only some of the model's markers is scaled with the right statistics.

``scaling`` (a setting):

* ``"model"``: z = (v - centre_m) / scale_m with the training statistics (default);
* ``"image"``: the statistics are re-estimated on each image being read (robust to batch effects between
  acquisitions, but shifts the values of images dominated by one cell type).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Normalizer:
    cofactor: float = 1.0
    scaling: str = "model"  # "model" or "image"
    clip: float = 5.0
    centre: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)

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
        return self

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
