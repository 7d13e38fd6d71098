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

from .errors import S2SInputError


def _strip_suffix(name: str) -> str:
    name = str(name)
    for suf in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def measure_steinbock(root: str | Path, progress: bool = True, images: list[str] | None = None) -> pd.DataFrame:
    from .io import read_image, read_mask, read_steinbock
    from .measure import measure_cells

    folder = read_steinbock(root)
    entries = [e for e in folder.entries if images is None or e.name in set(images)]
    it = entries
    if progress:
        from tqdm import tqdm

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
    labels["image"] = labels["image"].map(_strip_suffix)
    cells = cells.copy()
    cells["image"] = cells["image"].map(_strip_suffix)
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
            from .io import write_csv_atomic

            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            gz = str(cache).endswith(".gz")
            write_csv_atomic(cells, cache, index=False, compression="gzip" if gz else None)
        return cells
    return read_csv_table(path)


def read_csv_table(path: str | Path) -> pd.DataFrame:
    """A CSV table (plain or compressed), or one clear error naming the file."""
    from .io import check_input_file

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
