"""IMC raw files: every acquisition of an ``.mcd`` file and the ``.txt`` export, through ``readimc``
(the ``[imc]`` extra)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import ImageReadError, S2SInputError, first_line
from .checks import _check_file, _check_pixel_size, image_stem
from .imcimage import IMCImage
from .panels import _unique_names, apply_panel


def _readimc():
    try:
        import readimc  # here, not at the top: the optional [imc] extra, and ~0.5 s to import
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


def read_imc_txt(path: str | Path, panel: pd.DataFrame | None = None, pixel_size_um: float | None = None,
                 panel_path: str | Path | None = None) -> IMCImage:
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
