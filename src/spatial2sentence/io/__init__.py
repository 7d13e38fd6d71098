"""All file input and output of spatial2sentence, with strict validation.

Readers return plain numpy arrays and pandas tables; every problem with an input file raises a subclass
of :class:`~spatial2sentence.errors.S2SInputError` whose message names the file and the problem in one
line. Input files are only ever opened for reading (TIFFs are memory-mapped read-only where the file
layout allows it). Writers are atomic: they write to a temporary name in the target folder and rename,
so a killed process never leaves a half-written output.

Supported inputs
----------------
- multi-channel TIFF: CYX (one page per channel, as steinbock and ImageJ write them), YXC (one page of
  interleaved samples); a 3-D stack whose channel axis cannot be told apart from the others is rejected
  unless ``axes`` is given;
- OME-TIFF: channel names and pixel size from the OME-XML (steinbock's ``Metal_Marker`` names are
  split into metal tag and marker name);
- steinbock folders: ``img/``, ``masks/``, ``panel.csv`` and optionally ``images.csv``;
- IMC ``.mcd`` and ``.txt`` files through ``readimc`` (the ``[imc]`` extra), one image per acquisition;
- panels: steinbock ``panel.csv`` (``channel``, ``name``, ``keep``; comma or semicolon separated);
- masks: 2-D integer TIFF with 0 as background; float masks only when every value is integral.
"""

from __future__ import annotations

import hashlib
import json
import os
import logging
import math
import re
import stat
import tempfile
import uuid
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import ImageReadError, MaskError, PanelError, S2SInputError, first_line

TIFF_SUFFIXES = (".tif", ".tiff")
IMC_SUFFIXES = (".mcd", ".txt")
# steinbock and readimc name channels by metal tag, e.g. "Pr141"; OME names are often "Pr141_CD3".
_METAL_TAG = re.compile(r"^([A-Z][a-z]?\d{2,3})(?:_(.+))?$")


@dataclass
class IMCImage:
    """A multi-channel image: ``data`` is (channels, y, x); ``channels`` are the marker names."""

    name: str
    data: np.ndarray
    channels: list[str]
    pixel_size_um: float = 1.0
    path: Path | None = None
    metals: list[str] | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(y, x) size in pixels."""
        return tuple(self.data.shape[1:])

    def channel(self, name: str) -> np.ndarray:
        return self.data[self.channels.index(name)]


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


# --------------------------------------------------------------------------------------------- checks
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


# --------------------------------------------------------------------------------------------- panels
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
    from ..aliases import canonical_marker

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


# --------------------------------------------------------------------------------------------- TIFF
@contextmanager
def _open_tiff(path: Path, error=ImageReadError):
    import tifffile

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


def check_image_and_mask(image_path: str | Path, mask_path: str | Path) -> None:
    """Compare a TIFF image's and its mask's height and width from their headers, before decoding
    either (a mask of the wrong size is refused in milliseconds, whatever the image's size)."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    mask_yx = tiff_yx(mask_path, MaskError)
    if not is_tiff(image_path):
        return
    image_yx = tiff_yx(image_path)
    if image_yx is not None and mask_yx is not None and image_yx != mask_yx:
        raise MaskError(mask_path, f"mask shape {mask_yx} differs from image shape {image_yx} "
                                   f"of {image_path.name}")


def check_image_inputs(image: str | Path, mask: str | Path | None = None, panel: str | Path | None = None,
                       out: str | Path | None = None, out_is_folder: bool = False) -> None:
    """The checks of one image run, before any heavy work (model loading, decoding): every input an
    existing readable regular file, image and mask sizes equal by their headers, within the size
    limit, and the output not one of the inputs and writable."""
    image = Path(image)
    _check_file(image)
    if panel is not None:
        _check_file(panel, PanelError)
    if mask is not None:
        _check_file(mask, MaskError)
        check_image_and_mask(image, mask)
    elif is_tiff(image):
        tiff_yx(image)
    if out is not None:
        check_output_path(out, [image, mask, panel], folder=out_is_folder)


def _read_series(tif, path: Path, error=ImageReadError) -> np.ndarray:
    """The first series, memory-mapped read-only where the file is uncompressed and contiguous."""
    series = tif.series[0]
    try:
        if series.dataoffset is not None:
            import tifffile

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


def _check_pixel_size(size: float, path) -> None:
    if not np.isfinite(size) or size <= 0:
        raise ImageReadError(path, f"pixel size must be a positive number of um, got {size} "
                                   "(from the OME metadata unless --pixel-size is given)")


# --------------------------------------------------------------------------------------------- IMC raw
def _readimc():
    try:
        import readimc
    except ImportError:
        raise S2SInputError(
            None, "reading .mcd/.txt files needs readimc: pip install 'napari-s2s[imc]'"
        ) from None
    return readimc


def _acquisition_image(data, metals, labels, name, path, panel, panel_path, pixel_size_um):
    metals = list(metals)
    if panel is not None:
        data, names, metals = apply_panel(data, panel, metals, path, panel_path)
    else:
        names = [lab if lab else metal for lab, metal in zip(labels, metals)]
    names = _unique_names(names, panel_path or path)
    size = 1.0 if pixel_size_um is None else pixel_size_um
    _check_pixel_size(size, path)
    return IMCImage(name, data, names, float(size), Path(path), metals)


def _read_mcd(path, panel, pixel_size_um, panel_path, only: int | None = None) -> list[IMCImage]:
    """Acquisitions of an ``.mcd`` file (all, or only the one with id ``only``), in file order."""
    path = _check_file(path)
    readimc = _readimc()
    images = []
    try:
        with readimc.MCDFile(path) as mcd:
            for acq in (a for slide in mcd.slides for a in slide.acquisitions):
                if only is not None and acq.id != only:
                    continue
                data = mcd.read_acquisition(acq)
                name = f"{image_stem(path)}_{acq.id:03d}"
                images.append(
                    _acquisition_image(
                        data, acq.channel_names, acq.channel_labels, name, path, panel, panel_path,
                        pixel_size_um,
                    )
                )
    except S2SInputError:
        raise
    except Exception as err:
        what = "not a readable MCD file" if only is None else f"acquisition {only} is not readable"
        raise ImageReadError(path, f"{what} ({first_line(err)})") from None
    if not images:
        raise ImageReadError(path, "MCD file holds no acquisition" if only is None else f"no acquisition {only}")
    return images


def read_mcd(
    path: str | Path,
    panel: pd.DataFrame | None = None,
    pixel_size_um: float | None = None,
    panel_path: str | Path | None = None,
) -> list[IMCImage]:
    """Every acquisition of an IMC ``.mcd`` file, named ``<file stem>_<acquisition id:03d>`` as by steinbock.

    Without a panel the channels are named by their labels (metal tag when a label is empty); with a
    steinbock panel they are selected and named by metal tag.
    """
    return _read_mcd(path, panel, pixel_size_um, panel_path)


def read_mcd_acquisition(
    path: str | Path,
    acquisition_id: int,
    panel: pd.DataFrame | None = None,
    pixel_size_um: float | None = None,
    panel_path: str | Path | None = None,
) -> IMCImage:
    """One acquisition of an ``.mcd`` file (named as by :func:`read_mcd`), reading only its pixels."""
    return _read_mcd(path, panel, pixel_size_um, panel_path, only=acquisition_id)[0]


def mcd_acquisition_ids(path: str | Path) -> list[int]:
    """The acquisition ids of an IMC ``.mcd`` file, without reading any pixels."""
    path = _check_file(path)
    readimc = _readimc()
    try:
        with readimc.MCDFile(path) as mcd:
            ids = [acq.id for slide in mcd.slides for acq in slide.acquisitions]
    except Exception as err:
        raise ImageReadError(path, f"not a readable MCD file ({first_line(err)})") from None
    if not ids:
        raise ImageReadError(path, "MCD file holds no acquisition")
    return ids


def read_imc_txt(
    path: str | Path,
    panel: pd.DataFrame | None = None,
    pixel_size_um: float | None = None,
    panel_path: str | Path | None = None,
) -> IMCImage:
    """One IMC acquisition from its ``.txt`` export (pixel values are rounded decimal text)."""
    path = _check_file(path)
    readimc = _readimc()
    try:
        with readimc.TXTFile(path) as txt:
            data = txt.read_acquisition()
            metals, labels = txt.channel_names, txt.channel_labels
    except Exception as err:
        raise ImageReadError(path, f"not a readable IMC .txt file ({first_line(err)})") from None
    return _acquisition_image(
        data, metals, labels, image_stem(path), path, panel, panel_path, pixel_size_um
    )


# --------------------------------------------------------------------------------------------- generic
def read_image(
    path: str | Path,
    panel: pd.DataFrame | str | Path | None = None,
    pixel_size_um: float | None = None,
    axes: str | None = None,
) -> IMCImage:
    """Read one multi-channel image (TIFF, OME-TIFF, single-acquisition ``.mcd`` or ``.txt``).

    ``panel`` is a panel table or the path of a ``panel.csv``. ``pixel_size_um`` overrides the OME
    metadata (default 1.0 um per pixel, as for IMC).
    """
    panel_path = None
    if isinstance(panel, (str, Path)):
        panel_path = Path(panel)
        panel = read_panel(panel_path)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mcd":
        images = read_mcd(path, panel, pixel_size_um, panel_path)
        if len(images) > 1:
            raise ImageReadError(
                path, f"holds {len(images)} acquisitions; read them with read_mcd()"
            )
        return images[0]
    if suffix == ".txt":
        return read_imc_txt(path, panel, pixel_size_um, panel_path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if suffix not in TIFF_SUFFIXES:
        raise ImageReadError(path, "unsupported file type; expected .tiff, .ome.tiff, .mcd or .txt")
    return read_tiff(path, panel, pixel_size_um, axes, panel_path)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None, image_path=None) -> np.ndarray:
    """Read a 2-D segmentation mask (0 = background, one positive integer id per cell).

    Float masks are accepted when every value is integral. ``shape`` (y, x), if given, must match.
    """
    path = _check_file(path, MaskError)
    with _open_tiff(path, MaskError) as tif:
        _check_tiff_structure(tif, path, MaskError)
        array = _read_series(tif, path, MaskError)
    array = np.asarray(array)
    if array.ndim > 2:
        array = array.reshape([s for s in array.shape if s != 1])
    if array.ndim != 2:
        raise MaskError(path, f"mask must be 2-D, got shape {array.shape}")
    if array.dtype == bool:
        raise MaskError(path, "mask is boolean; a label mask with one integer id per cell is needed")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise MaskError(path, "mask is not integer: it holds NaN or inf values")
        if not np.array_equal(array, np.round(array)):
            raise MaskError(path, "mask is not integer: it holds non-integral values")
        if array.size and array.max() > np.iinfo(np.uint32).max:
            raise MaskError(path, "mask ids exceed the uint32 range")
        array = array.astype(np.uint32 if array.size and array.max() > 65535 else np.uint16)
    elif not np.issubdtype(array.dtype, np.integer):
        raise MaskError(path, f"mask is not integer (pixel type {array.dtype})")
    if array.size and array.min() < 0:
        raise MaskError(path, "mask holds negative ids; 0 is background and cells are 1, 2, ...")
    if not array.any():
        raise MaskError(path, "mask contains no cells (every pixel is 0)")
    if shape is not None and tuple(array.shape) != tuple(shape):
        other = f" of {Path(image_path).name}" if image_path else ""
        raise MaskError(path, f"mask shape {tuple(array.shape)} differs from image shape {tuple(shape)}{other}")
    return array


# --------------------------------------------------------------------------------------------- steinbock
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


# --------------------------------------------------------------------------------------------- writing
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
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _now() -> str:
    import time

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
    import tifffile

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
