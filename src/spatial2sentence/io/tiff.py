"""Reading multi-channel TIFF and OME-TIFF files, checked from their headers before decoding.

A truncated or corrupt file, a complex pixel type and an image over the size limit
(``S2S_MAX_IMAGE_GB``) are refused before anything is decompressed; the channel axis is found from the
file's metadata or refused as ambiguous.
"""

from __future__ import annotations

import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import tifffile

from ..errors import ImageReadError, S2SInputError, first_line
from .checks import _check_file, _check_pixel_size, image_stem
from .imcimage import IMCImage
from .panels import _unique_names, apply_panel, split_metal_name


@contextmanager
def _open_tiff(path: Path, error=ImageReadError):
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:  # tifffile raises several types for corrupt files
        raise error(path, f"not a readable TIFF ({first_line(err)})") from None
    try:
        yield tif
    finally:
        tif.close()


MAX_IMAGE_GB_ENV = "S2S_MAX_IMAGE_GB"
DEFAULT_MAX_IMAGE_GB = 4.0  # decoded size; a 1000 x 1000 px, 50-channel float32 IMC image is 0.2 GB


def max_image_bytes() -> int:
    """The largest decoded image or mask read (``S2S_MAX_IMAGE_GB``, default 4 GB).

    Why: a few-MB compressed TIFF can claim 40 x 10000 x 10000 pixels; the limit is checked from the
    header, before anything is decompressed.
    """
    raw = os.environ.get(MAX_IMAGE_GB_ENV, "")
    try:
        gb = float(raw) if raw.strip() else DEFAULT_MAX_IMAGE_GB
    except ValueError:
        gb = float("nan")
    if not math.isfinite(gb) or gb <= 0:
        raise S2SInputError(None, f"{MAX_IMAGE_GB_ENV} must be a positive number of GB, got {raw!r}")
    return int(gb * 1e9)


@contextmanager
def _tifffile_complaints() -> Iterator[list[str]]:
    """Collect what tifffile logs (it logs, rather than raises, on broken page chains) and keep it off
    the user's terminal: the caller turns it into one clear error."""
    logger = logging.getLogger("tifffile")
    found: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                found.append(record.getMessage())

    handler, propagate = _Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _check_tiff_structure(tif, path: Path, error=ImageReadError) -> None:
    """Refuse a truncated or corrupt TIFF and one too large to decode, from its header alone.

    Why: tifffile reads what it can of a file cut short (a 5-channel image cut in half reads as 2
    channels, with only a log line), so every page must be present and its data inside the file.
    """
    with _tifffile_complaints() as complaints:
        try:
            n_pages = len(tif.pages)
            series = tif.series
            pages = list(tif.pages)
        except Exception as err:  # noqa: BLE001 - tifffile raises many types on broken headers
            raise error(path, f"not a readable TIFF ({first_line(err)})") from None
    if complaints:
        text = re.sub(r"^<[^>]*>\s*", "", complaints[0])
        raise error(path, f"corrupt or truncated TIFF ({text}); {n_pages} page(s) readable")
    if not series:
        raise error(path, "not a readable TIFF (no image found: corrupt or truncated file)")
    size = path.stat().st_size
    for i, page in enumerate(pages):
        offsets, counts = getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ())
        if offsets and counts:
            end = max(int(o) + int(c) for o, c in zip(offsets, counts))
            if end > size:
                raise error(path, f"truncated TIFF: page {i + 1} of {n_pages} needs {end:,} bytes, "
                                  f"the file has {size:,}")
    first = series[0]
    dtype = np.dtype(first.dtype)
    if np.issubdtype(dtype, np.complexfloating):
        raise error(path, f"complex pixel type {dtype}; intensities must be real numbers")
    nbytes = math.prod(int(d) for d in first.shape) * dtype.itemsize
    limit = max_image_bytes()
    if nbytes > limit:
        raise error(path, f"{'x'.join(map(str, first.shape))} pixels of {dtype} would take "
                          f"{nbytes / 1e9:.1f} GB decoded, over the {limit / 1e9:g} GB limit; "
                          f"set {MAX_IMAGE_GB_ENV} to raise it")


def tiff_yx(path: str | Path, error=ImageReadError) -> tuple[int, int] | None:
    """(height, width) of a TIFF's first series from its header (nothing decoded), or None when its
    axes do not name Y and X."""
    path = _check_file(path, error)
    with _open_tiff(path, error) as tif:
        _check_tiff_structure(tif, path, error)
        series = tif.series[0]
        axes, shape = series.axes, series.shape
    if "Y" in axes and "X" in axes and len(axes) == len(shape):
        return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    return None



def _read_series(tif, path: Path, error=ImageReadError) -> np.ndarray:
    """The first series, memory-mapped read-only where the file is uncompressed and contiguous."""
    series = tif.series[0]
    try:
        if series.dataoffset is not None:
            return tifffile.memmap(path, mode="r", series=0)
        return series.asarray()
    except Exception as err:
        raise error(path, f"corrupt TIFF data ({first_line(err)})") from None


def _ome_info(tif) -> tuple[list[str] | None, float | None]:
    """Channel names and pixel size (um) from OME-XML, if present."""
    if not tif.is_ome or not tif.ome_metadata:
        return None, None
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        return None, None
    ns = {"ome": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
    pixels = root.find(".//ome:Pixels", ns) if ns else root.find(".//Pixels")
    if pixels is None:
        return None, None
    channels = pixels.findall("ome:Channel", ns) if ns else pixels.findall("Channel")
    names = [c.get("Name") or c.get("Fluor") or c.get("ID") for c in channels] or None
    size = pixels.get("PhysicalSizeX")
    unit = pixels.get("PhysicalSizeXUnit", "µm")
    scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
    try:
        pixel_size = float(size) * scale if size is not None and scale is not None else None
    except ValueError:
        pixel_size = float("nan")  # refused by _check_pixel_size with the file's name
    return names, pixel_size


def _imagej_labels(tif) -> list[str] | None:
    meta = tif.imagej_metadata or {}
    labels = meta.get("Labels")
    return list(labels) if labels else None


def _to_cyx(array: np.ndarray, series_axes: str, n_pages: int, path: Path, axes: str | None):
    """Bring a TIFF series to (C, Y, X), refusing layouts whose channel axis is ambiguous."""
    if axes is not None:
        axes = axes.upper()
        if sorted(axes) != sorted("CYX") or array.ndim != 3:
            raise ImageReadError(path, f"axes={axes!r} does not fit an image of shape {array.shape}")
        return np.transpose(array, [axes.index(a) for a in "CYX"])
    # Drop singleton axes (OME often carries T=1, Z=1) but keep track of their names.
    keep = [i for i, s in enumerate(array.shape) if s != 1]
    names = "".join(series_axes[i] for i in keep) if len(series_axes) == array.ndim else None
    array = array.reshape([array.shape[i] for i in keep])
    if array.ndim == 2:
        raise ImageReadError(
            path, f"2-D single-channel image {array.shape}; a multi-channel image (C, Y, X) is needed"
        )
    if array.ndim != 3:
        raise ImageReadError(path, f"{array.ndim}-D image {array.shape}; expected (C, Y, X)")
    # 'C' from OME/ImageJ; 'S' is tifffile's name for separate colour planes of a 3-plane image.
    if names is not None and names.endswith("YX") and names[0] in "CS":
        return array
    if names is not None and names == "YXS":
        return np.moveaxis(array, -1, 0)
    if names is not None and names[0] in "ZT":
        raise ImageReadError(
            path, f"a {names[0]}-stack of shape {array.shape}, not a multi-channel image"
        )
    # Without metadata the channel axis is the one clearly shorter than both image axes.
    first_is_channel = array.shape[0] < min(array.shape[1:])
    last_is_channel = array.shape[2] < min(array.shape[:2])
    if first_is_channel and (n_pages > 1 or not last_is_channel):
        return array  # one page per channel, as steinbock and ImageJ write them
    if last_is_channel and not first_is_channel:
        return np.moveaxis(array, -1, 0)
    raise ImageReadError(
        path,
        f"3-D stack of shape {array.shape} has ambiguous axes; "
        "save it as (channels, y, x) or give the axes explicitly (axes='CYX' or 'YXC')",
    )


def read_tiff(
    path: str | Path,
    panel: pd.DataFrame | None = None,
    pixel_size_um: float | None = None,
    axes: str | None = None,
    panel_path: str | Path | None = None,
) -> IMCImage:
    """Read a multi-channel TIFF or OME-TIFF as an :class:`IMCImage`."""
    path = _check_file(path)
    with _open_tiff(path) as tif:
        _check_tiff_structure(tif, path)
        series = tif.series[0]
        series_axes, n_pages = series.axes, len(tif.pages)
        ome_names, ome_pixel_size = _ome_info(tif)
        labels = ome_names or _imagej_labels(tif)
        array = _read_series(tif, path)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ImageReadError(path, f"unsupported pixel type {array.dtype}")
    data = _to_cyx(array, series_axes, n_pages, path, axes)
    n = data.shape[0]
    metals = None
    if labels is not None and len(labels) == n:
        split = [split_metal_name(str(lab)) for lab in labels]
        metals = [m for m, _ in split] if all(m for m, _ in split) else None
        names = [name for _, name in split]
    else:
        names = [f"channel_{i}" for i in range(n)]
    if panel is not None:
        data, names, metals = apply_panel(data, panel, metals, path, panel_path)
    names = _unique_names(names, path if panel is None else (panel_path or path))
    size = pixel_size_um if pixel_size_um is not None else (1.0 if ome_pixel_size is None else ome_pixel_size)
    _check_pixel_size(size, path)
    return IMCImage(image_stem(path), data, names, float(size), path, metals)
