"""steinbock folders: ``img/`` (or ``ome/``), ``masks/``, ``panel.csv`` and optionally ``images.csv``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import ImageReadError, PanelError, first_line
from .checks import _check_file, image_stem, is_tiff
from .panels import read_panel


@dataclass
class SteinbockEntry:
    """One image of a steinbock folder: its image file and mask file (``None`` when missing)."""

    name: str
    image_path: Path
    mask_path: Path | None


@dataclass
class SteinbockFolder:
    root: Path
    panel: pd.DataFrame
    entries: list[SteinbockEntry]
    images_table: pd.DataFrame | None = None


def read_steinbock(root: str | Path, mask_dir: str = "masks") -> SteinbockFolder:
    """List the images of a steinbock folder (``img/``, ``masks/``, ``panel.csv``, ``images.csv``).

    Images come in ``images.csv`` order when it exists, else sorted by name. An image without a mask gets
    ``mask_path=None`` so a batch can report it and go on.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageReadError(root, "steinbock folder not found")
    img_dir = root / "img"
    if not img_dir.is_dir() and (root / "ome").is_dir():
        img_dir = root / "ome"  # steinbock's OME-TIFF export (channel names inside) without img/
    if not img_dir.is_dir():
        raise ImageReadError(root, "not a steinbock folder: no img/ (or ome/) subfolder")
    panel_path = root / "panel.csv"
    if not panel_path.exists():
        raise PanelError(panel_path, "file not found (a steinbock folder needs panel.csv)")
    panel = read_panel(panel_path)
    images_table = None
    files = sorted(p for p in img_dir.iterdir() if is_tiff(p))
    if (root / "images.csv").exists():
        images_table = _read_images_csv(root / "images.csv")
        if "image" in images_table.columns:
            listed = [img_dir / str(n) for n in images_table["image"]]
            files = [p for p in listed if p.exists()] + [p for p in files if p not in listed]
    if not files:
        raise ImageReadError(img_dir, "no TIFF images in the folder")
    entries = []
    for p in files:
        # masks/X.tiff for img/X.tiff, and for ome/X.ome.tiff
        candidates = [root / mask_dir / p.name] + [root / mask_dir / f"{image_stem(p)}{s}" for s in (".tiff", ".tif")]
        mask = next((m for m in candidates if m.exists()), None)
        entries.append(SteinbockEntry(image_stem(p), p, mask))
    return SteinbockFolder(root, panel, entries, images_table)


def _read_images_csv(path: Path) -> pd.DataFrame:
    """steinbock's ``images.csv``: UTF-8, and every ``image`` a file name inside ``img/`` (an entry
    such as ``../../x.tiff`` would read files outside the folder)."""
    _check_file(path)
    try:
        table = pd.read_csv(path, encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ImageReadError(path, "not UTF-8 text; save it as UTF-8 (steinbock writes UTF-8)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ImageReadError(path, f"not a readable CSV ({first_line(err)})") from None
    if "image" in table.columns:
        for row, name in enumerate(table["image"].astype(str), start=2):
            if name != Path(name).name or name in ("", ".", "..") or "\\" in name:
                raise ImageReadError(path, f"row {row}: image {name!r} is not a file name inside img/")
    return table


def find_steinbock_mask(image_path: Path, mask_dir: str = "masks") -> Path | None:
    candidate = image_path.parent.parent / mask_dir / image_path.name
    return candidate if candidate.exists() else None
