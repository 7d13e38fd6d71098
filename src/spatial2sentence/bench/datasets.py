"""The benchmark's datasets: cells tables with standard columns, and the built-in real datasets.

A :class:`Dataset` holds a cells table with the columns ``image, Object, x, y``, markers, and optionally
``cell_type`` = the cell-type label, ``phenotype`` = an input phenotype for phenotype-only data,
``stage`` = clinical status, ``donor`` = the group that splits (:func:`standard_table` makes one from any
table). The built-in datasets (:data:`BUILTIN`, :func:`load_builtin`) are read from a folder the caller
names (``s2s benchmark --data-root``), laid out as ``damond_pancreas_toy/``, ``scimap_cycif/``,
``damond_diabetes_layouts/cells.csv.gz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ..aliases import canonical_marker
from ..cellset import NON_MARKER
from ..errors import S2SInputError
from ..tables import load_table
from .simulate import load_layouts as read_layout_table, simulate_dataset

BUILTIN = ("damond_pancreas_toy", "scimap_cycif", "damond_diabetes_layouts", "damond_semisynthetic")
# columns of a measured steinbock table (spatial2sentence.tables.load_table) that are not markers
_NOT_MARKERS = ("image", "Object", "x", "y", "area", "cell_type", "donor", "stage", "nonfinite_pixels")


@dataclass
class Dataset:
    """A benchmark dataset: its standard cells table (module doc), marker columns and which tasks it has."""

    name: str
    df: pd.DataFrame
    markers: list[str]
    description: str
    phenotype_only: bool = False
    cell_type: bool = True
    clinical: bool = False
    test_cells_per_image: int | None = None  # used where Budget.test_cells_per_image is None (None: all)
    notes: list[str] = field(default_factory=list)
    split: str = ""


def _drop_dna_bg(cols) -> list[str]:
    return [c for c in cols if not (str(c).upper().startswith("DNA") or str(c).upper().startswith("BG"))]


def _measured_markers(df: pd.DataFrame) -> list[str]:
    """The numeric marker columns of a measured steinbock table."""
    return [c for c in df.columns if c not in _NOT_MARKERS and pd.api.types.is_numeric_dtype(df[c])]


def _canonical_markers(df: pd.DataFrame, cols: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Rename marker columns to canonical names (dropping later duplicates) so the LM and the
    baselines see the same panel."""
    ren, seen = {}, set()
    for c in cols:
        k = canonical_marker(c)
        if k in seen:
            continue
        seen.add(k)
        ren[c] = k
    out = df[list(ren)].rename(columns=ren).astype(np.float64)
    return out, list(ren.values())


def split_into_strips(df: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """Cut each image into ``n`` vertical strips of equal cell counts; the strip becomes the image."""
    df = df.copy()
    parts = []
    for im, sub in df.groupby("image", sort=False):
        q = np.quantile(sub["x"].to_numpy(), np.linspace(0, 1, n + 1)[1:-1])
        strip = np.searchsorted(q, sub["x"].to_numpy(), side="right")
        parts.append(pd.Series([f"{im}|strip{s + 1}" for s in strip], index=sub.index))
    df["image"] = pd.concat(parts).loc[df.index]
    return df


def standard_table(df: pd.DataFrame, image_col=None, x_col="x", y_col="y", markers=None, phenotype_col=None,
                   label_col=None, clinical_col=None, group_col=None, object_col=None, name="table",
                   drop_dna_bg=False) -> Dataset:
    """Any cells table -> :class:`Dataset` with standard columns (see module doc)."""
    for c in (image_col, x_col, y_col, phenotype_col, label_col, clinical_col, group_col, object_col):
        if c is not None and c not in df.columns:
            raise S2SInputError(name, f"no column {c!r} (columns: {', '.join(map(str, df.columns[:30]))})")
    if label_col is None and clinical_col is None:
        raise S2SInputError(name, "nothing to predict: give --label-col (cell type) and/or --clinical-col")
    named = {c for c in (image_col, x_col, y_col, phenotype_col, label_col, clinical_col, group_col, object_col) if c}
    if markers is None:
        if phenotype_col is not None:
            markers = []
        else:
            markers = [c for c in df.columns if c not in named and str(c).lower() not in NON_MARKER
                       and pd.api.types.is_numeric_dtype(df[c])]
            if drop_dna_bg:
                markers = _drop_dna_bg(markers)
    else:
        missing = [m for m in markers if m not in df.columns]
        if missing:
            raise S2SInputError(name, f"marker columns not in the table: {missing}")
    if not markers and phenotype_col is None:
        raise S2SInputError(name, "no marker columns and no --phenotype-col")
    out = pd.DataFrame({
        "image": df[image_col].astype(str).to_numpy() if image_col else np.full(len(df), "image", object),
        "Object": df[object_col].to_numpy() if object_col else np.arange(1, len(df) + 1),
        "x": df[x_col].to_numpy(np.float64), "y": df[y_col].to_numpy(np.float64),
    })
    notes = []
    if markers:
        mdf, canon = _canonical_markers(df, list(markers))
        mdf.index = out.index
        out = pd.concat([out, mdf], axis=1)
    else:
        canon = []
    phen = False
    if not canon:
        out["cell_type"] = df[phenotype_col].astype(str).to_numpy()  # the phenotype is the input
        phen = True
        if label_col is not None and label_col != phenotype_col:
            notes.append("phenotype-only table: the cell-type task is not run (the phenotype is the input)")
        label_col = None
    elif label_col is not None:
        out["cell_type"] = df[label_col].astype(str).to_numpy()
    if clinical_col is not None:
        out["stage"] = df[clinical_col].astype(str).to_numpy()
    if group_col is not None:
        out["donor"] = df[group_col].astype(str).to_numpy()
    ok = np.isfinite(out[["x", "y"]].to_numpy()).all(1)
    if canon:
        ok &= np.isfinite(out[canon].to_numpy()).all(1)
    for c in ("cell_type", "stage"):
        if c in out.columns:
            ok &= ~df[{"cell_type": label_col or phenotype_col, "stage": clinical_col}[c]].isna().to_numpy()
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} rows with missing positions, markers or labels dropped")
        out = out.loc[ok].reset_index(drop=True)
    split = "by group (" + group_col + ")" if group_col else "by image"
    if out["image"].nunique() == 1:
        out = split_into_strips(out, 4)
        split = "one image: 4 vertical strips of equal cell counts, leave one strip out"
    return Dataset(name, out, canon, description=name, phenotype_only=phen,
                   cell_type=label_col is not None and not phen, clinical=clinical_col is not None,
                   notes=notes, split=split)


def load_damond_toy(root: Path) -> Dataset:
    folder = root / "damond_pancreas_toy"
    df = load_table(folder, progress=False)
    ds = standard_table(df, "image", "x", "y", _measured_markers(df), None, "cell_type", "stage", None, "Object",
                        name="damond_pancreas_toy")
    ds.description = ("3 real IMC images of human pancreas (Damond et al. 2019, 100x100 um crops), measured "
                      "here from images + masks (5 markers: H3, CD99, PIN, CD8a, CDH); cell type beta / alpha / "
                      "other; leave one image out")
    ds.split = "leave one image out (3 folds)"
    return ds


def load_scimap(root: Path) -> Dataset:
    folder = root / "scimap_cycif"
    raw = pd.read_csv(folder / "example_data.csv")
    a = ad.read_h5ad(folder / "example_data.h5ad")
    obs = a.obs.copy()
    obs["CellID"] = [int(str(i).rsplit("_", 1)[-1]) for i in obs.index]
    m = raw.merge(obs[["CellID", "phenotype", "X_position", "Y_position"]], on="CellID", suffixes=("", "_h5ad"))
    if len(m) != len(raw) or not np.allclose(m["X_position"], m["X_position_h5ad"]):
        raise S2SInputError(folder, "example_data.csv and example_data.h5ad do not match by CellID")
    m = m.drop(columns=["X_position_h5ad", "Y_position_h5ad"])
    markers = [c for c in _drop_dna_bg(raw.columns) if c in list(a.var_names)]
    ds = standard_table(m, None, "X_position", "Y_position", markers, None, "phenotype", None, None, "CellID",
                        name="scimap_cycif")
    ds.description = ("real CyCIF (scimap example, 1 image, 3,029 cells): raw mean intensities of the 33 "
                      "markers of example_data.csv (DNA and background channels dropped), normalised by us "
                      "(arcsinh, robust per-marker scaling fitted on training cells); labels: the 25 gated "
                      "phenotypes of example_data.h5ad, matched by CellID (order and positions checked)")
    return ds


def load_layouts(root: Path) -> Dataset:
    df = pd.read_csv(root / "damond_diabetes_layouts" / "cells.csv.gz")
    ds = standard_table(df, "imageID", "x", "y", None, "cellType", None, "stage", "case", "cellID",
                        name="damond_diabetes_layouts")
    ds.description = ("real tissue layouts of Damond et al. 2019 (120 images, 12 donors, 253,777 cells): "
                      "cells carry only a phenotype (16 types) and a position; clinical status (Non-diabetic / "
                      "Onset / Long-duration) per image; leave donors out, every stage in every fold")
    ds.split = "leave donors out: 4 folds, each testing one donor per stage (donor order shuffled per seed)"
    ds.test_cells_per_image = 50
    return ds


def load_semisynthetic(root: Path, cells: str | None, images_per_donor: int = 3, workdir: str | None = None,
                       log=print) -> Dataset:
    """Measured semi-synthetic Damond cells: the cached table if present, else a stratified sample of
    images is simulated (``s2s simulate``) and measured here."""
    note = []
    if cells and Path(cells).exists():
        df = pd.read_csv(cells)
        note.append(f"measured cells of all 120 simulated images read from {cells} (s2s simulate seed 0, then "
                    "measured by spatial2sentence.measure)")
    else:
        lay = read_layout_table(root / "damond_diabetes_layouts" / "cells.csv.gz")
        per = lay.groupby(["case"])["imageID"].unique() if "case" in lay.columns else None
        imgs = sorted(i for v in per for i in sorted(map(str, v))[:images_per_donor])
        out = Path(workdir or "out/benchmark_sim")
        log(f"simulating {len(imgs)} semi-synthetic images ({images_per_donor} per donor) into {out} ...")
        simulate_dataset(root / "damond_diabetes_layouts" / "cells.csv.gz", out, images=imgs, seed=0, workers=2)
        df = load_table(out, progress=False)
        note.append(f"{len(imgs)} simulated images ({images_per_donor} per donor, s2s simulate seed 0), measured here")
    markers = _drop_dna_bg(_measured_markers(df))
    ds = standard_table(df, "image", "x", "y", markers, None, "cell_type", "stage", "donor", "Object",
                        name="damond_semisynthetic")
    ds.description = ("SEMI-SYNTHETIC: real Damond 2019 layouts rendered into IMC-like images by s2s simulate "
                      "(per-type marker profiles, pixel noise, optical spill), measured by us; 16 cell types and "
                      "clinical status; leave donors out")
    ds.split = "leave donors out: 4 folds, each testing one donor per stage (donor order shuffled per seed)"
    ds.test_cells_per_image = 50
    ds.notes += note
    return ds


def load_builtin(name: str, root: Path, sim_cells: str | None = None, log=print) -> Dataset:
    """The built-in dataset ``name`` (one of :data:`BUILTIN`) read from the folder ``root``."""
    if name == "damond_pancreas_toy":
        return load_damond_toy(root)
    if name == "scimap_cycif":
        return load_scimap(root)
    if name == "damond_diabetes_layouts":
        return load_layouts(root)
    if name == "damond_semisynthetic":
        return load_semisynthetic(root, sim_cells, log=log)
    raise S2SInputError(name, f"unknown dataset (built in: {', '.join(BUILTIN)})")
