"""Atomic writing of CSV, JSON and TIFF outputs, and the lock that keeps two runs out of one folder.

Writers write to a temporary name in the target folder and rename, so a killed process never leaves a
half-written output.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import tifffile

from ..errors import S2SInputError

try:
    import fcntl
except ImportError:  # Windows: msvcrt locks instead
    fcntl = None
    import msvcrt


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs follow the umask
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def folder_lock(folder: str | Path, what: str = "s2s annotate") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` for the block; a second holder gets a clear error at once.

    Why: two runs writing into one output folder would delete each other's temporary files (a run
    removes the ``.part`` files a killed run left) and mix their outputs. The lock is the operating
    system's (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on ``folder/.s2s.lock``: it is released
    when its process ends, even after ``kill -9``, so a stale lock file never blocks the next run. The
    file records the holder's pid and start time for the message. It guards processes of one machine
    (and of machines that share the folder over a file system with working locks).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".s2s.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            _lock_fd(fd)
        except OSError:
            try:
                holder = path.read_text(encoding="utf-8", errors="replace").strip()[:200]
            except OSError:  # Windows refuses to read a locked range
                holder = ""
            raise S2SInputError(folder, f"another {holder or what + ' run'} is writing into this folder; "
                                        "wait for it to finish or choose another output folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{what} run (pid {os.getpid()}, started {_now()})".encode())
        yield path
        os.ftruncate(fd, 0)  # a finished run leaves an empty lock file: nobody holds it
    finally:
        os.close(fd)  # closing releases the lock


def _lock_fd(fd: int) -> None:
    if fcntl is None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """Column names and text cells that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``
    first) get a leading ``'``, as spreadsheets themselves mark text; numbers such as ``-1.5`` stay."""
    def fix(v):
        return "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) and not _is_number(v) else v

    out = df.rename(columns=fix) if any(isinstance(c, str) and fix(c) != c for c in df.columns) else df
    for c in out.columns:
        if out[c].dtype == object or isinstance(out[c].dtype, pd.CategoricalDtype):
            col = out[c].astype(object)
            if col.map(lambda v: fix(v) is not v).any():
                out = out.copy() if out is df else out
                out[c] = col.map(fix)
    return out


def write_csv_atomic(df: pd.DataFrame, path: str | Path, **kwargs) -> Path:
    """Write a CSV atomically; text a spreadsheet would run as a formula is neutralised first."""
    df = neutralise_formulas(df)
    kwargs.setdefault("index", False)
    # The temporary name ends in .part, so pandas cannot infer compression from it: use the target's.
    kwargs.setdefault("compression", {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip"}.get(Path(path).suffix.lower()))
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


def write_json_atomic(obj, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_tiff_atomic(
    path: str | Path,
    array: np.ndarray,
    channel_names: Sequence[str] | None = None,
    ome: bool = False,
    pixel_size_um: float = 1.0,
    compression: str | None = None,
) -> Path:
    """Write a 2-D mask or a (C, Y, X) image as TIFF (ImageJ-style pages) or OME-TIFF.

    No timestamps or random ids are written, so the same array gives the same bytes.
    """
    with atomic_path(path) as tmp:
        if ome:
            axes = "CYX" if array.ndim == 3 else "YX"
            metadata = {"axes": axes, "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um}
            # tifffile puts a time-based UUID into the OME-XML; derive it from the content instead
            # so the same array gives the same bytes.
            digest = hashlib.sha1(np.ascontiguousarray(array).tobytes())
            digest.update(repr((list(channel_names or []), pixel_size_um)).encode())
            metadata["UUID"] = f"urn:uuid:{uuid.UUID(digest.hexdigest()[:32])}"
            if channel_names is not None:
                metadata["Channel"] = {"Name": list(channel_names)}
            tifffile.imwrite(
                tmp, array, ome=True, metadata=metadata, photometric="minisblack",
                compression=compression,
            )
        else:
            # tifffile's JSON description records the axes, so the file reads back unambiguously.
            axes = "CYX" if array.ndim == 3 else "YX"
            tifffile.imwrite(
                tmp, array, photometric="minisblack", compression=compression,
                metadata={"axes": axes},
            )
    return Path(path)
