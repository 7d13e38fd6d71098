"""steinbock panels: reading ``panel.csv``, selecting and naming an image's channels by it, and the
channel-name rules (one name per marker, ``Metal_Marker`` labels split)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..aliases import canonical_marker
from ..errors import PanelError, first_line
from .checks import _check_file

# steinbock and readimc name channels by metal tag, e.g. "Pr141"; OME names are often "Pr141_CD3".
_METAL_TAG = re.compile(r"^([A-Z][a-z]?\d{2,3})(?:_(.+))?$")


def read_panel(path: str | Path) -> pd.DataFrame:
    """Read a steinbock ``panel.csv``: columns ``channel`` (metal tag), ``name`` and ``keep``.

    Comma or semicolon separated. ``keep`` defaults to 1 when absent. Returns the panel with ``keep``
    as bool; raises :class:`PanelError` on missing columns, empty or duplicate kept names.
    """
    path = _check_file(path, PanelError)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            header = fh.readline()
        sep = ";" if header.count(";") > header.count(",") else ","
        panel = pd.read_csv(path, sep=sep, dtype={"channel": str, "name": str}, encoding="utf-8-sig")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise PanelError(path, f"not a readable CSV panel ({first_line(err)})") from None
    panel.columns = [str(c).strip() for c in panel.columns]
    if "name" not in panel.columns:
        raise PanelError(path, f"panel needs a 'name' column; found {list(panel.columns)}")
    if panel.empty:
        raise PanelError(path, "panel has no rows")
    if "keep" in panel.columns:
        keep = pd.to_numeric(panel["keep"], errors="coerce")
        if keep.isna().any() or not keep.isin([0, 1]).all():
            raise PanelError(path, "column 'keep' must hold 0 or 1 in every row")
        panel["keep"] = keep.astype(bool)
    else:
        panel["keep"] = True
    if not panel["keep"].any():
        raise PanelError(path, "no channel is kept (keep = 0 in every row)")
    names = panel.loc[panel["keep"], "name"]
    if names.isna().any() or (names.astype(str).str.strip() == "").any():
        raise PanelError(path, "a kept channel has an empty 'name'")
    panel["name"] = panel["name"].astype(str).str.strip()
    _unique_names(panel.loc[panel["keep"], "name"].tolist(), path, rows=(panel.index[panel["keep"]] + 2).tolist())
    if "channel" in panel.columns:
        panel["channel"] = panel["channel"].astype(str).str.strip()
    return panel.reset_index(drop=True)


def apply_panel(
    data: np.ndarray,
    panel: pd.DataFrame,
    metals: Sequence[str] | None,
    image_path: str | Path,
    panel_path: str | Path | None = None,
) -> tuple[np.ndarray, list[str], list[str] | None]:
    """Select and name the channels of ``data`` (C, Y, X) by a panel.

    When the image knows its channels' metal tags (``.mcd``, ``.txt``, steinbock OME), kept panel rows
    are matched by ``channel``. Otherwise the image must hold either exactly the kept rows (steinbock's
    ``img/`` TIFFs) or every row of the panel, in panel order.
    """
    kept = panel[panel["keep"]]
    source = panel_path if panel_path is not None else image_path
    n = data.shape[0]
    if metals is not None and "channel" in panel.columns and set(kept["channel"]) <= set(metals):
        index = [list(metals).index(m) for m in kept["channel"]]
        return data[index], list(kept["name"]), list(kept["channel"])
    metal_list = list(kept["channel"]) if "channel" in panel.columns else None
    if len(kept) == n:
        return data, list(kept["name"]), metal_list
    if len(panel) == n:
        index = np.flatnonzero(panel["keep"].to_numpy())
        return data[index], list(kept["name"]), metal_list
    raise PanelError(
        source,
        f"panel has {len(kept)} kept channels ({len(panel)} rows) but {Path(image_path).name} "
        f"has {n} channels",
    )


def _unique_names(names: Sequence[str], source, rows: Sequence[int] | None = None) -> list[str]:
    """``names`` stripped; refused when two name the same marker, also after alias matching
    (``CD8a`` and ``CD8A``, ``H3`` and ``h3``): one of them would otherwise be dropped silently."""
    names = [str(n).strip() for n in names]
    first: dict[str, int] = {}
    for k, n in enumerate(names):
        key = canonical_marker(n).upper()
        if key in first:
            j = first[key]
            where = (f"rows {rows[j]} and {rows[k]}" if rows is not None else f"channels {j + 1} and {k + 1}")
            what = f"'{names[j]}' and '{n}' name the same marker" if names[j] != n else f"'{n}' is repeated"
            raise PanelError(source, f"duplicate marker names: {what} ({where})")
        first[key] = k
    return names


def split_metal_name(label: str) -> tuple[str | None, str]:
    """'Pr141_Cytokeratin 5' -> ('Pr141', 'Cytokeratin 5'); 'CD3' -> (None, 'CD3')."""
    m = _METAL_TAG.match(label.strip())
    if m and m.group(2):
        return m.group(1), m.group(2)
    if m:
        return m.group(1), m.group(1)
    return None, label.strip()
