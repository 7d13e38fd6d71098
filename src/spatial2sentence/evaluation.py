"""Held-out evaluation of a model on a labelled steinbock folder, through the same path as ``s2s predict``
(read image, read mask, measure, predict).

``type_map`` maps the model's cell types to the folder's classes (e.g. the 16 Damond types onto
beta / alpha / other: ``{"beta": "beta", "alpha": "alpha", "*": "other"}``; ``"*"`` = everything else).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .annotate import annotate_image
from .io import read_image, read_mask, read_steinbock
from .tables import strip_image_suffix


def map_types(pred: pd.Series, type_map: dict | None) -> pd.Series:
    if not type_map:
        return pred.astype(str)
    other = type_map.get("*")
    return pred.astype(str).map(lambda t: type_map.get(t, other if other is not None else t))


def evaluate_folder(model, root: str | Path, images: list[str] | None = None, include: dict | None = None,
                    type_map: dict | None = None, batch_size: int = 256, progress: bool = False,
                    allow_partial_panel: bool = True) -> dict:
    """Cell-type accuracy (+ balanced accuracy, per-class recall) and per-image clinical status accuracy.

    ``allow_partial_panel``: an evaluation measures the model on images that may carry only part of its
    panel (the 5-marker toy crops) instead of refusing them as prediction does; the share of the
    model's markers present is reported (``panel_fraction``)."""
    root = Path(root)
    folder = read_steinbock(root)
    labels = pd.read_csv(root / "labels.csv")
    labels["image"] = labels["image"].map(strip_image_suffix)
    if include:
        for col, vals in include.items():
            labels = labels[labels[col].astype(str).isin([str(v) for v in vals])]
    wanted = set(labels["image"]) if images is None else set(images)
    entries = [e for e in folder.entries if e.name in wanted and e.mask_path is not None]
    it = entries
    if progress:
        it = tqdm(entries, desc="evaluating", unit="image")
    cells, img_rows, fractions = [], [], []
    for e in it:
        img = read_image(e.image_path, panel=folder.panel)
        mask = read_mask(e.mask_path, shape=img.shape)
        pred = annotate_image(model, img, mask, batch_size=batch_size,
                              allow_partial_panel=allow_partial_panel).predictions
        fractions.append(pred.coverage.fraction if pred.coverage is not None else np.nan)
        c = pred.cells.copy()
        c["image"] = e.name
        cells.append(c)
        st = pred.image_status.iloc[0].to_dict() if len(pred.image_status) else {}
        img_rows.append({"image": e.name, "pred_status": st.get("status")})
    if not cells:
        return {"n_images": 0}
    cells = pd.concat(cells, ignore_index=True).merge(labels, on=["image", "Object"], how="inner",
                                                      suffixes=("", "_true"))
    res: dict = {"n_images": len(entries), "n_cells": int(len(cells)),
                 "panel_fraction": round(float(np.nanmin(fractions)), 3) if fractions else None}
    truth_col = "cell_type_true" if "cell_type_true" in cells.columns else None
    if truth_col:
        pred_t = map_types(cells["cell_type"], type_map)
        true_t = cells[truth_col].astype(str)
        ok = pred_t == true_t
        res["cell_type_accuracy"] = float(ok.mean())
        recalls = {k: float(ok[true_t == k].mean()) for k in sorted(true_t.unique())}
        res["cell_type_balanced_accuracy"] = float(np.mean(list(recalls.values())))
        res["per_class_recall"] = recalls
        res["majority_class_baseline"] = float(true_t.value_counts(normalize=True).iloc[0])
    if "stage" in labels.columns:
        stage = labels.groupby("image")["stage"].first()
        imgs = pd.DataFrame(img_rows)
        imgs["true_status"] = imgs["image"].map(stage)
        res["status_accuracy_per_image"] = float((imgs["pred_status"] == imgs["true_status"]).mean())
        res["status_chance"] = 1.0 / max(1, len(model.status_labels))
        res["status_per_image"] = {r.image: f"{r.pred_status} (true {r.true_status})" for r in imgs.itertuples()}
        if "donor" in labels.columns:
            donor = labels.groupby("image")["donor"].first()
            imgs["donor"] = imgs["image"].map(donor)
            votes = imgs.groupby("donor").agg(pred=("pred_status", lambda s: s.value_counts().index[0]),
                                              true=("true_status", "first"))
            res["status_accuracy_per_donor_majority"] = float((votes["pred"] == votes["true"]).mean())
    return res
