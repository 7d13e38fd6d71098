"""The image record that every reader of :mod:`spatial2sentence.io` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class IMCImage:
    """A multi-channel image: ``data`` is (channels, y, x); ``channels`` are the marker names."""

    name: str
    data: np.ndarray
    channels: list[str]
    pixel_size_um: float = 1.0
    path: Path | None = None
    metals: list[str] | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(y, x) size in pixels."""
        return tuple(self.data.shape[1:])

    def channel(self, name: str) -> np.ndarray:
        return self.data[self.channels.index(name)]
