"""AnnData in and out, as scanpy / squidpy users expect.

* :func:`predict_anndata`: predictions of every cell of an ``AnnData`` (markers in ``X`` / ``var_names``,
  positions in ``obsm['spatial']``, the image in an ``obs`` column) written back into it: ``obs``
  columns ``s2s_cell_type``, ``s2s_cell_type_probability``, ``s2s_no_signal``, ``s2s_status`` (per
  cell), ``obsm['s2s_type_probabilities']`` (cells x classes) and ``uns['s2s']`` (class names, the
  clinical status per image, the panel coverage, the model).
* :func:`anndata_cells`: the cells table of an ``AnnData`` (what training on one reads).

``S2SModel.predict(adata)`` calls :func:`predict_anndata`; training on an ``AnnData`` is
:func:`spatial2sentence.training.fit_anndata` (there, because training imports the model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import S2SInputError
from .io import atomic_path
from .tables import anndata_frame, standard_cells


def anndata_cells(adata, image_key: str | None, label_key: str | None = None, status_key: str | None = None):
    df = anndata_frame(adata)
    if "x" not in df.columns and "spatial" not in adata.obsm:
        raise S2SInputError("adata", "no positions: put the cell centroids (um) in obsm['spatial']")
    markers = [str(v) for v in adata.var_names]
    return standard_cells(df, "adata", x_col="x", y_col="y", image_col=image_key, markers=markers,
                          label_col=label_key, status_col=status_key), markers


def predict_anndata(model, adata, image_key: str | None = None, copy: bool = False,
                    allow_partial_panel: bool = False, **kwargs):
    """Predict every cell of ``adata`` and write the results into it (or into a copy); returns it."""
    adata = adata.copy() if copy else adata
    cells, markers = anndata_cells(adata, image_key)
    pred = model.predict_cells(cells, markers=markers, source="adata", allow_partial_panel=allow_partial_panel,
                               **kwargs)
    p = pred.cells.reset_index(drop=True)
    adata.obs["s2s_cell_type"] = pd.Categorical(p["cell_type"].to_numpy(), categories=list(
        dict.fromkeys(list(model.type_labels) + ["unknown"])))
    adata.obs["s2s_cell_type_probability"] = p["cell_type_probability"].to_numpy()
    if "no_signal" in p.columns:
        adata.obs["s2s_no_signal"] = p["no_signal"].to_numpy(bool)
    if "status" in p.columns:
        adata.obs["s2s_status"] = p["status"].to_numpy(object)
    cols = [c for c in p.columns if c.startswith("p_") and not c.startswith("p_status_")]
    adata.obsm["s2s_type_probabilities"] = p[cols].to_numpy(np.float32)
    adata.uns["s2s"] = {
        "type_labels": list(model.type_labels),
        "status_labels": list(model.status_labels),
        "image_status": pred.image_status.astype({c: str for c in ("status",) if c in pred.image_status}),
        "coverage": {k: v for k, v in (pred.coverage.to_dict() if pred.coverage else {}).items()},
        "model": str(model.info.get("name", "")),
    }
    return adata


def write_predictions_h5ad(table: str | Path, pred, out: str | Path, model) -> Path:
    """The input ``.h5ad`` with the prediction columns (see :func:`predict_anndata`), written atomically."""
    import anndata as ad  # here: 1.3 s to import (python -X importtime), needed only for .h5ad files

    adata = ad.read_h5ad(table)
    p = pred.cells.reset_index(drop=True)
    if len(p) != adata.n_obs:
        raise ValueError("prediction rows differ from the AnnData's cells")
    adata.obs["s2s_cell_type"] = p["cell_type"].astype(str).to_numpy()
    adata.obs["s2s_cell_type_probability"] = p["cell_type_probability"].to_numpy()
    cols = [c for c in p.columns if c.startswith("p_") and not c.startswith("p_status_")]
    adata.obsm["s2s_type_probabilities"] = p[cols].to_numpy(np.float32)
    adata.uns["s2s"] = {"type_labels": list(model.type_labels), "status_labels": list(model.status_labels),
                        "model": str(model.info.get("name", ""))}
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    return Path(out)
