"""Training and evaluation tables: a steinbock folder with ``labels.csv`` (measured here), or a cells CSV.

A steinbock folder is read with :mod:`.io` and measured with :func:`~spatial2sentence.measure.measure_cells`;
``labels.csv`` (``image, Object, cell_type, ...``; ``image`` with or without its ``.tiff`` suffix) is
joined on ``(image, Object)``. The measured table can be cached as a CSV (``cache``) so later runs skip
the measurement. A cells CSV (``.csv`` / ``.csv.gz``) is read as is; phenotype-only tables (positions and a
cell-type column, no markers) are fine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .cellset import IMAGE_COLS, OBJECT_COLS, X_COLS, Y_COLS, find_column, marker_columns
from .errors import S2SInputError
from .io import check_input_file, read_image, read_mask, read_steinbock, write_csv_atomic
from .measure import measure_cells


def strip_image_suffix(name: str) -> str:
    name = str(name)
    for suf in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def measure_steinbock(root: str | Path, progress: bool = True, images: list[str] | None = None) -> pd.DataFrame:

    folder = read_steinbock(root)
    entries = [e for e in folder.entries if images is None or e.name in set(images)]
    it = entries
    if progress:

        it = tqdm(entries, desc="measuring", unit="image")
    tables = []
    for e in it:
        if e.mask_path is None:
            continue
        img = read_image(e.image_path, panel=folder.panel)
        mask = read_mask(e.mask_path, shape=img.shape)
        df = measure_cells(img, mask)
        df.insert(0, "image", e.name)
        tables.append(df)
    if not tables:
        raise S2SInputError(root, "no image with a mask to measure")
    return pd.concat(tables, ignore_index=True)


def join_labels(cells: pd.DataFrame, labels: pd.DataFrame, source) -> pd.DataFrame:
    labels = labels.copy()
    if not {"image", "Object"} <= set(labels.columns):
        raise S2SInputError(source, "labels.csv needs columns image and Object")
    labels["image"] = labels["image"].map(strip_image_suffix)
    cells = cells.copy()
    cells["image"] = cells["image"].map(strip_image_suffix)
    out = cells.merge(labels, on=["image", "Object"], how="left", suffixes=("", "_label"))
    return out


def _cache_is_fresh(cache: Path, source: Path) -> bool:
    """A measurement cache counts only if it is newer than every file of its source folder.

    Why: a re-rendered or edited folder must never be trained on through a stale cache.
    """
    if not cache.exists():
        return False
    if not source.exists():
        return True
    files = [source] if source.is_file() else [f for f in source.rglob("*") if f.is_file()]
    newest = max((f.stat().st_mtime for f in files), default=0.0)
    return cache.stat().st_mtime >= newest


def load_table(path: str | Path, cache: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """A cells table from a steinbock folder (+ labels.csv) or a CSV file."""
    path = Path(path)
    if cache is not None and _cache_is_fresh(Path(cache), path):
        return pd.read_csv(cache)
    if path.is_dir():
        cells = measure_steinbock(path, progress)
        if (path / "labels.csv").exists():
            cells = join_labels(cells, read_csv_table(path / "labels.csv"), path / "labels.csv")
        if cache is not None:

            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            gz = str(cache).endswith(".gz")
            write_csv_atomic(cells, cache, index=False, compression="gzip" if gz else None)
        return cells
    return read_csv_table(path)


def read_csv_table(path: str | Path) -> pd.DataFrame:
    """A CSV table (plain or compressed), or one clear error naming the file."""
    path = check_input_file(path)
    try:
        return pd.read_csv(path)
    except UnicodeDecodeError:
        raise S2SInputError(path, "not UTF-8 text; save the table as UTF-8 CSV") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, EOFError, OSError, ValueError) as err:
        lines = str(err).strip().splitlines()
        raise S2SInputError(path, f"not a readable CSV table ({lines[0] if lines else type(err).__name__})") from None


def filter_rows(df: pd.DataFrame, include: dict | None = None, exclude: dict | None = None) -> pd.DataFrame:
    """Keep rows whose column values are in ``include[col]`` and not in ``exclude[col]``."""
    keep = np.ones(len(df), bool)
    for col, vals in (include or {}).items():
        keep &= df[col].astype(str).isin([str(v) for v in vals]).to_numpy()
    for col, vals in (exclude or {}).items():
        keep &= ~df[col].astype(str).isin([str(v) for v in vals]).to_numpy()
    return df.loc[keep].reset_index(drop=True)


# ------------------------------------------------------------------------------ any cells table (CLI --table)
def read_cells_table(path: str | Path, x_col: str | None = None, y_col: str | None = None,
                     object_col: str | None = None, image_col: str | None = None,
                     markers: list[str] | None = None, label_col: str | None = None,
                     status_col: str | None = None) -> pd.DataFrame:
    """A cells table from a CSV or an AnnData ``.h5ad`` file, in the library's columns: ``image``,
    ``Object``, ``x``, ``y``, the markers, and ``cell_type`` / ``stage`` when ``label_col`` /
    ``status_col`` are given.

    Columns are found by the usual names when not given: steinbock (``Object``, ``centroid-1``...),
    MCMICRO (``CellID``, ``X_centroid``, ``Y_centroid``), scimap (``X_position``), cytomapper
    (``Pos_X``). An ``.h5ad`` gives its markers from ``X`` / ``var_names``, positions from
    ``obsm['spatial']`` (else the obs columns), labels from ``obs`` (scverse conventions).
    """
    path = Path(path)
    if path.name.lower().endswith(".h5ad"):
        df, h5ad_markers = _anndata_frame(path)
        markers = markers if markers is not None else h5ad_markers
    else:
        df = read_csv_table(path)
    return standard_cells(df, path, x_col, y_col, object_col, image_col, markers, label_col, status_col)


def _anndata_frame(path: Path) -> tuple[pd.DataFrame, list[str]]:

    check_input_file(path)
    import anndata as ad  # here: 1.3 s to import (python -X importtime), needed only for .h5ad files

    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - h5py/anndata raise many types for a bad file
        lines = str(err).strip().splitlines()
        raise S2SInputError(path, f"not a readable AnnData file ({lines[0] if lines else type(err).__name__})") from None
    return anndata_frame(adata), [str(v) for v in adata.var_names]


def anndata_frame(adata) -> pd.DataFrame:
    """``obs`` plus the marker matrix ``X`` (one column per var) and ``obsm['spatial']`` as ``x``, ``y``."""
    X = adata.X
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    df = pd.DataFrame(X.astype(np.float64), columns=[str(v) for v in adata.var_names], index=adata.obs_names)
    obs = adata.obs.drop(columns=[c for c in adata.obs.columns if str(c) in df.columns])
    df = pd.concat([obs, df], axis=1)
    if "spatial" in adata.obsm:
        xy = np.asarray(adata.obsm["spatial"])[:, :2]
        df["x"], df["y"] = xy[:, 0], xy[:, 1]
    return df.reset_index(drop=True)


def standard_cells(df: pd.DataFrame, source, x_col=None, y_col=None, object_col=None, image_col=None,
                   markers=None, label_col=None, status_col=None) -> pd.DataFrame:
    """See :func:`read_cells_table`; ``df`` is any cells table."""
    def col(given, names, what, required):
        if given is not None:
            if given not in df.columns:
                raise S2SInputError(source, f"no column {given!r} for {what} (columns: "
                                            f"{', '.join(map(str, list(df.columns)[:25]))})")
            return given
        found = find_column(df, names)
        if found is None and required:
            raise S2SInputError(source, f"no {what} column (looked for {', '.join(names)}); name it with "
                                        f"--{what.replace(' ', '-')}-col")
        return found

    xc, yc = col(x_col, ("x",) + X_COLS, "x", True), col(y_col, ("y",) + Y_COLS, "y", True)
    oc, ic = col(object_col, OBJECT_COLS, "object", False), col(image_col, IMAGE_COLS, "image", False)
    lc = col(label_col, (), "label", False) if label_col else None
    sc = col(status_col, (), "status", False) if status_col else None
    named = {c for c in (xc, yc, oc, ic, lc, sc) if c is not None}
    if markers is None:
        markers = [c for c in marker_columns(df) if c not in named]
    missing = [m for m in markers if m not in df.columns]
    if missing:
        raise S2SInputError(source, f"marker columns not in the table: {', '.join(map(str, missing[:10]))}")
    if not markers:
        raise S2SInputError(source, "no marker columns found; name them with --markers")
    out = pd.DataFrame({
        "image": df[ic].astype(str).to_numpy() if ic else np.full(len(df), Path(str(source)).stem, object),
        "Object": df[oc].to_numpy() if oc else np.arange(1, len(df) + 1),
        "x": pd.to_numeric(df[xc], errors="coerce").to_numpy(np.float64),
        "y": pd.to_numeric(df[yc], errors="coerce").to_numpy(np.float64),
    })
    values = df[list(markers)].apply(pd.to_numeric, errors="coerce")
    values.index = out.index
    out = pd.concat([out, values], axis=1)
    if not np.isfinite(out[["x", "y"]].to_numpy()).all():
        raise S2SInputError(source, "cell positions (x, y) hold missing or non-numeric values")
    if lc is not None:
        out["cell_type"] = df[lc].astype(object).where(df[lc].notna(), None).to_numpy()
    if sc is not None:
        out["stage"] = df[sc].astype(object).where(df[sc].notna(), None).to_numpy()
    return out

