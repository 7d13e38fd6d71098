"""napari reader: IMC images (TIFF, OME-TIFF, ``.mcd``, ``.txt``), masks and steinbock folders.

* A multi-channel image opens as one image layer per channel, named by marker (OME channel names or
  the steinbock ``panel.csv`` next to ``img/``), additive blending, contrast 0 to the 99.5th percentile.
  When the image sits in a steinbock folder, its mask (``masks/<same name>``) opens with it.
* A 2-D integer TIFF opens as a Labels layer (a mask).
* A steinbock folder opens every image with its mask, side by side (10 px apart).
* ``.mcd`` / ``.txt`` need ``readimc``; every acquisition of an ``.mcd`` opens side by side.

:func:`get_reader` returns ``None`` for anything it cannot read; a file that looks readable but fails
gives a one-line napari notification and no layers, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spatial2sentence.errors import S2SInputError

from . import _layers

GAP_PX = 10
TIFF_SUFFIXES = (".tif", ".tiff")


def _readimc_available() -> bool:
    try:
        import readimc  # noqa: F401
    except Exception:
        return False
    return True


def _tiff_kind(path: Path) -> str | None:
    """``"mask"`` for a 2-D integer TIFF, ``"image"`` for anything else tifffile can open."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                return None
            s = tif.series[0]
            shape = [d for d in s.shape if d != 1]
            if len(shape) == 2 and np.issubdtype(np.dtype(s.dtype), np.integer):
                return "mask"
            if len(shape) == 2 and len(tif.pages) == 1 and np.issubdtype(np.dtype(s.dtype), np.floating):
                # a float 2-D page: a mask only when integral (checked by read_mask)
                return "mask?"
            return "image"
    except Exception:
        return None


def _steinbock_panel(image_path: Path):
    panel = image_path.parent.parent / "panel.csv"
    return panel if image_path.parent.name == "img" and panel.exists() else None


def _is_steinbock(path: Path) -> bool:
    return path.is_dir() and (path / "img").is_dir() and (path / "panel.csv").exists()


def get_reader(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(str(path))
    if _is_steinbock(p):
        return read_steinbock_folder
    if p.is_dir() or not p.exists():
        return None
    name = p.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        return read_tiff_file if _tiff_kind(p) else None
    if name.endswith((".mcd", ".txt")) and _readimc_available():
        return read_imc_file
    return None


def _notify_error(err: BaseException) -> None:
    try:
        from napari.utils.notifications import show_error

        show_error(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except Exception:  # pragma: no cover - no napari
        pass


def image_layers(image, mask=None, translate=(0.0, 0.0), suffix: str = "") -> list[tuple]:
    """Layers of one :class:`~spatial2sentence.io.IMCImage` (and its mask)."""
    layers = _layers.channel_layers(image.data, image.channels, image.name, image.pixel_size_um, translate,
                                    name_suffix=suffix, path=str(image.path) if image.path else None)
    if mask is not None:
        layers.append(_layers.mask_layer(mask, image.name, image.pixel_size_um, translate))
    return layers


def _side_by_side(images_and_masks) -> list[tuple]:
    out, x = [], 0.0
    multi = len(images_and_masks) > 1
    for image, mask in images_and_masks:
        out += image_layers(image, mask, translate=(0.0, x), suffix=f" [{image.name}]" if multi else "")
        x += (image.shape[1] + GAP_PX) * image.pixel_size_um
    return out


def read_tiff_file(path):
    from spatial2sentence.io import find_steinbock_mask, read_image, read_mask

    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    try:
        kind = _tiff_kind(path)
        if kind and kind.startswith("mask"):
            try:
                mask = read_mask(path)
                return [_layers.mask_layer(mask, path.name.split(".")[0], name=path.name.split(".")[0] + " mask")]
            except S2SInputError:
                if kind == "mask":
                    raise
        image = read_image(path, panel=_steinbock_panel(path))
        mask = None
        mpath = find_steinbock_mask(path)
        if mpath is not None:
            try:
                mask = read_mask(mpath, image.shape, image_path=path)
            except S2SInputError as err:
                _notify_error(err)
        return image_layers(image, mask)
    except S2SInputError as err:
        _notify_error(err)
        return None


def read_steinbock_folder(path):
    from spatial2sentence.io import read_image, read_mask, read_steinbock

    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    try:
        folder = read_steinbock(path)
    except S2SInputError as err:
        _notify_error(err)
        return None
    pairs = []
    for e in folder.entries:
        try:
            image = read_image(e.image_path, panel=folder.panel)
            mask = read_mask(e.mask_path, image.shape, image_path=e.image_path) if e.mask_path else None
            pairs.append((image, mask))
        except S2SInputError as err:  # one bad image: report it, open the others
            _notify_error(err)
    return _side_by_side(pairs) or None


def read_imc_file(path):
    from spatial2sentence.io import read_imc_txt, read_mcd

    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    try:
        images = read_mcd(path) if path.suffix.lower() == ".mcd" else [read_imc_txt(path)]
    except S2SInputError as err:
        _notify_error(err)
        return None
    return _side_by_side([(im, None) for im in images]) or None
