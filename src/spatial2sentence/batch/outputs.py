"""What a batch run writes: per image (``cells/``, ``types/``, ``overlays/``, ``done/``, each file
atomically, the done record last) and for the run (``summary.csv``, ``errors.csv``, ``cells.h5ad``,
rebuilt from the per-image files); see the :mod:`spatial2sentence.batch` doc."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..io import atomic_path, write_csv_atomic, write_json_atomic, write_tiff_atomic
from ..palette import label_colors
from .discover import ImageJob

SUBDIRS = ("cells", "types", "overlays", "done")


def _col(prefix: str, label: str) -> str:
    return prefix + str(label).replace(" ", "_")


def output_paths(out_dir: str | Path, name: str) -> dict[str, Path]:
    out = Path(out_dir)
    return {
        "cells": out / "cells" / f"{name}.csv",
        "types": out / "types" / f"{name}.tiff",
        "overlay": out / "overlays" / f"{name}.png",
        "done": out / "done" / f"{name}.json",
    }


def read_done(out_dir: str | Path, name: str, fingerprint: str | None = None) -> dict | None:
    """The done record of image ``name`` when all its outputs exist (and the model matches)."""
    paths = output_paths(out_dir, name)
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        rec = json.loads(paths["done"].read_text())
    except (OSError, ValueError):
        return None
    if fingerprint is not None and rec.get("model_fingerprint") != fingerprint:
        return None
    return rec


def write_image_files(out_dir: str | Path, name: str, table: pd.DataFrame, types: np.ndarray, overlay) -> None:
    """The cells table, class-ID mask and overlay of one image, each atomically. The done record is
    removed first (and written last, :func:`write_done`), so that it never stands beside a
    half-replaced set."""
    paths = output_paths(out_dir, name)
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    paths["done"].unlink(missing_ok=True)
    write_csv_atomic(table, paths["cells"])
    write_tiff_atomic(paths["types"], types)
    with atomic_path(paths["overlay"]) as tmp:
        overlay.save(tmp, format="PNG")


def write_done(out_dir: str | Path, name: str, record: dict) -> None:
    """The done record of one image: written last, it marks the image's outputs complete."""
    write_json_atomic(record, output_paths(out_dir, name)["done"])


def clean_stale_parts(out_dir: str | Path) -> int:
    """Remove temporary ``.*.part`` files left by a killed run; returns how many."""
    out = Path(out_dir)
    n = 0
    for d in [out, *(out / s for s in SUBDIRS)]:
        if d.is_dir():
            for p in d.glob(".*.part"):
                p.unlink(missing_ok=True)
                n += 1
    return n


def versions() -> dict:
    """The versions of Python, the packages a run depends on, CUDA and the GPU (for ``run.json``)."""
    v = {"python": platform.python_version()}
    for pkg in ("napari-s2s", "numpy", "pandas", "torch", "transformers", "anndata", "dask", "distributed",
                "tifffile", "readimc"):
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = None
    try:
        v["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        v["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # pragma: no cover
        pass
    return v


def collect_outputs(out_dir: str | Path, jobs: Sequence[ImageJob], meta: dict, records: dict[str, dict]) -> dict:
    """Rebuild ``summary.csv``, ``cells.h5ad`` and ``errors.csv`` from the per-image outputs of ``jobs``."""
    out = Path(out_dir)
    rows, tables, done = [], [], []
    for job in jobs:
        rec = read_done(out, job.name, meta["fingerprint"])
        if rec is None:
            continue
        done.append(rec)
        row = {"image": job.name, "cells": rec["cells"]}
        row.update({_col("n_", t): rec["type_counts"].get(t, 0) for t in meta["type_labels"]})
        row["n_untyped"] = rec.get("untyped", 0)
        row["status"] = rec.get("status")
        row["status_probability"] = rec.get("status_probability")
        row["status_confident"] = rec.get("status_confident")  # absent from records of older versions
        row.update({_col("p_status_", s): rec["status_probabilities"].get(s) for s in meta["status_labels"]})
        rows.append(row)
        tables.append((job.name, rec, pd.read_csv(output_paths(out, job.name)["cells"])))
    columns = (["image", "cells"] + [_col("n_", t) for t in meta["type_labels"]]
               + ["n_untyped", "status", "status_probability", "status_confident"]
               + [_col("p_status_", s) for s in meta["status_labels"]])
    write_csv_atomic(pd.DataFrame(rows, columns=columns), out / "summary.csv")
    errs = [{"image": r["image"], "file": r["file"], "reason": r["reason"]}
            for j in jobs if (r := records.get(j.name)) is not None and r["state"] == "error"]
    write_csv_atomic(pd.DataFrame(errs, columns=["image", "file", "reason"]), out / "errors.csv")
    n = write_h5ad(out / "cells.h5ad", tables, meta)
    return {"cells": n, "images": len(done)}


def write_h5ad(path: Path, tables: list[tuple[str, dict, pd.DataFrame]], meta: dict) -> int:
    """AnnData of every cell: X marker means (NaN where an image lacks a marker), obs predictions."""
    import anndata as ad  # here: 1.3 s to import (python -X importtime), and a run checks its inputs first

    markers: list[str] = []
    for _, rec, _t in tables:
        markers += [c for c in rec["channels"] if c not in markers]
    type_labels, status_labels = meta["type_labels"], meta["status_labels"]
    pred_cols = (["cell_type", "cell_type_probability"] + [_col("p_", t) for t in type_labels]
                 + ["status", "status_probability"] + [_col("p_status_", s) for s in status_labels])
    xs, obs = [], []
    for name, rec, t in tables:
        xs.append(t.reindex(columns=markers).to_numpy(np.float32))
        o = pd.DataFrame({"image": name, "Object": t["Object"].to_numpy(np.int64),
                          "x": t["x"].to_numpy(np.float64), "y": t["y"].to_numpy(np.float64),
                          "area": t["area"].to_numpy(np.int64)})
        o["nonfinite_pixels"] = t["nonfinite_pixels"].to_numpy(np.int64) if "nonfinite_pixels" in t else 0
        for c in pred_cols:
            o[c] = t[c].to_numpy() if c in t else np.nan
        obs.append(o)
    if obs:
        X = np.concatenate(xs)
        obs_df = pd.concat(obs, ignore_index=True)
    else:
        X = np.zeros((0, len(markers)), np.float32)
        obs_df = pd.DataFrame(columns=["image", "Object", "x", "y", "area", "nonfinite_pixels", *pred_cols])
    obs_df.index = (obs_df["image"].astype(str) + "_" + obs_df["Object"].astype(str)).to_numpy()
    obs_df["image"] = pd.Categorical(obs_df["image"].astype(str), categories=[n for n, _, _ in tables])
    obs_df["cell_type"] = pd.Categorical(obs_df["cell_type"], categories=type_labels)
    obs_df["status"] = pd.Categorical(obs_df["status"], categories=status_labels)
    for c in [c for c in pred_cols if c.startswith("p_") or c.endswith("_probability")]:
        obs_df[c] = pd.to_numeric(obs_df[c], errors="coerce").astype(np.float64)
    adata = ad.AnnData(X=X, obs=obs_df, var=pd.DataFrame(index=pd.Index(markers, dtype=str)))
    adata.obsm["spatial"] = obs_df[["x", "y"]].to_numpy(np.float64)
    tc, sc = label_colors(type_labels), label_colors(status_labels)
    adata.uns["cell_type_colors"] = [tc[t] for t in type_labels]  # scanpy convention: per category
    adata.uns["status_colors"] = [sc[s] for s in status_labels]
    img_status = pd.DataFrame([
        {"image": n, "cells": rec["cells"], "status": rec.get("status") or "",
         "status_probability": rec.get("status_probability") if rec.get("status_probability") is not None else np.nan,
         "status_confident": bool(rec.get("status_confident")),
         **{_col("p_status_", s): (v if (v := rec["status_probabilities"].get(s)) is not None else np.nan)
            for s in status_labels}}
        for n, rec, _ in tables
    ], columns=["image", "cells", "status", "status_probability", "status_confident", *[_col("p_status_", s) for s in status_labels]])
    adata.uns["image_status"] = img_status.set_index("image")
    adata.uns["s2s"] = {
        "type_labels": list(type_labels),
        "status_labels": list(status_labels),
        "type_colors": tc,
        "status_colors": sc,
        "model_path": meta["path"],
        "model_fingerprint": meta["fingerprint"],
        "spatial_units": "um",
        "X": "mean marker intensity per cell (NaN where the image lacks the marker)",
    }
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return int(adata.n_obs)
