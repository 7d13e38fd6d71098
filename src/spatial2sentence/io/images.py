"""One image and its mask whatever the format: :func:`read_image` (TIFF, OME-TIFF, ``.mcd``,
``.txt``), :func:`read_mask`, and the checks of one image run before any heavy work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ImageReadError, MaskError, PanelError
from .checks import TIFF_SUFFIXES, _check_file, check_output_path, is_tiff
from .imc_raw import read_imc_txt, read_mcd
from .imcimage import IMCImage
from .panels import read_panel
from .tiff import _check_tiff_structure, _open_tiff, _read_series, read_tiff, tiff_yx


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
