"""Checks of input and output paths before anything is read or written, and file-name helpers.

Why: a FIFO or a device given as an input would block or never end, an output that is one of the
inputs would destroy it; both are refused with a one-line message before any work is done.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ImageReadError, S2SInputError

TIFF_SUFFIXES = (".tif", ".tiff")
IMC_SUFFIXES = (".mcd", ".txt")


def _check_file(path: str | Path, error=ImageReadError) -> Path:
    """``path`` if it is an existing, readable regular file (a FIFO or a device would block or never end)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(path, "file not found") from None
    except OSError as err:
        raise error(path, f"cannot be read ({err.strerror or type(err).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(path, "is a folder, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(path, "is not a regular file (a pipe, socket or device); give a file")
    if not os.access(path, os.R_OK):
        raise error(path, "cannot be read (permission denied)")
    return path


def check_input_file(path: str | Path, error=S2SInputError) -> Path:
    """Public form of the input check: exists, regular file, readable."""
    return _check_file(path, error)


def check_output_path(path: str | Path, inputs: Sequence[str | Path] = (), folder: bool = False) -> Path:
    """Refuse an output that would overwrite an input, sits under a file, is a folder where a file is
    written (or the reverse), or cannot be written; checked before any work is done."""
    path = Path(path)
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp)
        try:
            same = path.exists() and inp.exists() and os.path.samefile(path, inp)
        except OSError:
            same = False
        if same or path.resolve() == inp.resolve():
            raise S2SInputError(path, f"the output would overwrite the input {inp}; choose another output name")
    if path.exists() and path.is_dir() and not folder:
        raise S2SInputError(path, "is a folder; give a file name for the output")
    if path.exists() and not path.is_dir() and folder:
        raise S2SInputError(path, "is a file; give a folder for the outputs")
    parent = path if folder and path.exists() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise S2SInputError(path, f"cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise S2SInputError(path, f"cannot be written: no write permission in {parent}")
    return path


def is_tiff(path: str | Path) -> bool:
    return str(path).lower().endswith(TIFF_SUFFIXES)


def image_stem(path: str | Path) -> str:
    """File name without ``.tiff``, ``.ome.tiff``, ``.mcd``... (steinbock's image names)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".mcd", ".txt"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _check_pixel_size(size: float, path) -> None:
    if not np.isfinite(size) or size <= 0:
        raise ImageReadError(path, f"pixel size must be a positive number of um, got {size} "
                                   "(from the OME metadata unless --pixel-size is given)")
