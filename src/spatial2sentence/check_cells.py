"""A model's check cells: held-out cells with known types, stored in the model folder
(:data:`~spatial2sentence.domain.CHECK_CELLS`), on which a partial panel is judged
(:func:`panel_check`) and the probabilities are calibrated (``benchmarks/calibration.py``).

Why measure rather than count markers: how much a partial panel loses depends on WHICH markers it
keeps (the 5 markers of the real Damond toy crops were chosen to tell beta from alpha cells; 5 random
markers often are not), so the guard measures the panel at hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .aliases import canonical_marker
from .domain import CHECK_CELLS, required_accuracy
from .predict import predict_cellset
from .tables import read_csv_table

_FIXED = ("image", "Object", "x", "y", "cell_type")


def read_check_cells(model_dir: str | Path) -> pd.DataFrame | None:
    """The check cells of a model folder with canonical marker names (None when it has none)."""
    path = Path(model_dir) / CHECK_CELLS
    if not path.is_file():
        return None
    cells = read_csv_table(path)
    return cells.rename(columns={c: canonical_marker(c) for c in cells.columns if c not in _FIXED})


def panel_check(model, present: list[str]) -> dict | None:
    """The model's type accuracy on its check cells when only the ``present`` markers are measured,
    beside its accuracy with every marker, the majority class and the accuracy required; None when the
    model's folder holds no check cells. Cached on the model (per panel), not in the process."""
    path = getattr(model, "path", None)
    cells = read_check_cells(path) if path is not None else None
    if cells is None:
        return None
    cache = model.__dict__.setdefault("_panel_checks", {})
    key = tuple(sorted(present))
    if key in cache:
        return cache[key]
    truth = cells["cell_type"].astype(str).to_numpy()
    meta = [c for c in _FIXED[:4] if c in cells.columns]

    def accuracy(markers):
        cs = model.prepare(cells[meta + list(markers)], list(markers), source=CHECK_CELLS)
        pred = predict_cellset(model, cs, tasks=("type",), threads=1)
        return float(np.mean(pred.cells["cell_type"].astype(str).to_numpy() == truth))

    if "full" not in cache:
        cache["full"] = accuracy([m for m in model.markers if m in cells.columns])
    full = cache["full"]
    majority = float(np.unique(truth, return_counts=True)[1].max() / len(truth))
    have = [m for m in present if m in cells.columns]
    acc = accuracy(have) if have else 0.0
    cache[key] = {"accuracy": round(acc, 4), "full": round(full, 4), "majority": round(majority, 4),
                  "required": round(required_accuracy(full, majority), 4), "n_cells": int(len(cells))}
    return cache[key]
