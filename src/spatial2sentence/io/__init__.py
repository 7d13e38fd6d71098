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

Modules, one job each: :mod:`.checks` (input and output paths), :mod:`.panels`, :mod:`.tiff`,
:mod:`.imc_raw` (``.mcd``/``.txt``), :mod:`.images` (:func:`read_image`, :func:`read_mask`, the checks
of one image run), :mod:`.steinbock`, :mod:`.writing` (atomic writers, the folder lock); the
:class:`IMCImage` record is in :mod:`.imcimage`. The names below are the package's public interface.
"""

from .checks import check_input_file, check_output_path, image_stem, is_tiff
from .imc_raw import mcd_acquisition_ids, read_imc_txt, read_mcd, read_mcd_acquisition
from .images import check_image_inputs, read_image, read_mask
from .imcimage import IMCImage
from .panels import read_panel
from .steinbock import find_steinbock_mask, read_steinbock
from .writing import atomic_path, folder_lock, write_csv_atomic, write_json_atomic, write_tiff_atomic

__all__ = [
    "IMCImage",
    "atomic_path",
    "check_image_inputs",
    "check_input_file",
    "check_output_path",
    "find_steinbock_mask",
    "folder_lock",
    "image_stem",
    "is_tiff",
    "mcd_acquisition_ids",
    "read_image",
    "read_imc_txt",
    "read_mask",
    "read_mcd",
    "read_mcd_acquisition",
    "read_panel",
    "read_steinbock",
    "write_csv_atomic",
    "write_json_atomic",
    "write_tiff_atomic",
]
