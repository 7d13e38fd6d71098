"""Annotate one image: the one implementation behind the napari plugin, ``s2s predict``, batch runs
(in-process and on Dask) and the benchmark's image-level runs.

Data flow: a model (:func:`load_model`, loaded once per process for each folder, device and dtype) ->
the image's cells measured from its mask (:func:`spatial2sentence.measure.measure_cells`) -> the
model's prepared cells (partners, neighbourhoods) -> predictions -> one table (the measured cells with
the prediction columns, :func:`merge_predictions`) and one class-ID mask (:func:`class_id_mask`).

Progress and cancelling follow the core's one convention: ``progress(done, total)`` is called after
every batch of cells and returning ``False`` stops the run between batches (the result then says
``cancelled``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .cellset import CellSet
from .domain import PanelCoverage, PanelCoverageError
from .errors import MaskError, S2SInputError
from .io import IMCImage
from .labels import class_id_mask
from .measure import measure_cells
from .model import DEFAULT_MODEL_DIR, S2SModel, check_dtype, resolve_device
from .predict import Predictions

Progress = Callable[[int, int], "bool | None"]

# ------------------------------------------------------------------------------------------ the model
# The one model cache: (folder, resolved device, dtype) -> S2SModel. A second image, a second Run in
# napari or the next image of a batch does not read the weights again.
_MODELS: dict[tuple[str, str, str], S2SModel] = {}
# one lock for every load: a run asking for the model while the plugin's warm-up loads it waits for that
# load instead of loading it a second time, and two loads never import transformers at once from two
# threads (its lazy modules then fail with "cannot import name 'AutoConfig'", seen in
# benchmarks/cold_start.py)
_LOAD_LOCK = threading.Lock()


def model_dir(path: str | Path | None) -> Path:
    """The model folder ``path`` names (``None`` or ``""``: the embedded default model)."""
    return DEFAULT_MODEL_DIR if path is None or str(path) == "" else Path(path)


def load_model(path: str | Path | None = None, device: str = "auto", dtype: str = "auto") -> S2SModel:
    """The model in folder ``path`` (``None``: the embedded default), loaded once per process.

    The device is checked here, once, for every caller (CUDA asked for but absent: a clear
    :class:`~spatial2sentence.errors.S2SInputError`); the cache is keyed by the device it resolves to,
    so ``auto`` on a machine without CUDA shares the ``cpu`` model."""
    folder = model_dir(path)
    if path in (None, "") and not (folder / "s2s_config.json").exists():
        raise S2SInputError(folder, "the embedded default model is not installed; choose a model folder")
    resolved = str(resolve_device(device))
    key = (str(folder.resolve()), resolved, check_dtype(dtype))
    with _LOAD_LOCK:
        if key not in _MODELS:
            _MODELS[key] = S2SModel.from_pretrained(None if path in (None, "") else path, device=device,
                                                    dtype=dtype)
        return _MODELS[key]


def clear_model_cache() -> None:
    """Forget every loaded model (tests, or a model folder replaced on disk)."""
    with _LOAD_LOCK:
        _MODELS.clear()


# ------------------------------------------------------------------------------------------ outputs
def merge_predictions(cells: pd.DataFrame, pred: Predictions, image: str) -> pd.DataFrame:
    """One row per measured cell (in the cells' order): ``image``, the measured columns, then every
    prediction column of ``pred.cells`` (NaN for cells the run did not reach)."""
    p = pred.cells.drop(columns=[c for c in ("image",) if c in pred.cells.columns])
    p = p.set_index(p["Object"].astype(str)).drop(columns=["Object"])
    extra = p.reindex(cells["Object"].astype(str).to_numpy())
    extra.index = cells.index
    table = pd.concat([cells, extra], axis=1)
    table.insert(0, "image", image)
    return table.reset_index(drop=True)


# ------------------------------------------------------------------------------------------ one image
@dataclass
class Annotation:
    """Everything one run on one image produced."""

    image: str
    cells: pd.DataFrame  # measured cells: Object, x, y (um), area, markers (the names the user gave)
    table: pd.DataFrame  # one row per cell: image, the measured columns, the prediction columns
    predictions: Predictions
    model: S2SModel
    markers: list[str]  # the cells table's marker columns
    cellset: CellSet | None = None  # the model's prepared cells (partners), reused by explanations
    coverage: PanelCoverage | None = None  # which of the model's markers the image carries
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)

    # read from the predictions and the model when the run ends (see annotate_cells)
    image_status: dict = field(default_factory=dict)  # status, status_probability, status_confident,
    # p_status_<label>; {} when the model has no clinical labels or nothing was predicted
    cancelled: bool = False
    type_labels: list[str] = field(default_factory=list)
    status_labels: list[str] = field(default_factory=list)
    used_markers: list[str] = field(default_factory=list)
    unknown_markers: list[str] = field(default_factory=list)

    def class_id_mask(self, mask: np.ndarray) -> np.ndarray:
        return class_id_mask(mask, self.table["Object"].to_numpy(), self.table["cell_type"].tolist(),
                             self.type_labels)


def check_arrays(data, channels: Sequence[str], mask, image: str = "image") -> None:
    """Shape and content checks of an image array (channels x height x width) and its mask, as one-line
    :class:`~spatial2sentence.errors.S2SInputError` messages naming ``image``, before any heavy work."""
    if mask is None:
        raise MaskError(image, "no mask: add a Labels layer with the cell segmentation (0 = background)")
    shape = tuple(data.shape) if hasattr(data, "shape") else np.shape(data)
    if len(shape) != 3:
        raise S2SInputError(image, f"expected channels x height x width, got an array of shape {shape}")
    if len(channels) != shape[0]:
        raise S2SInputError(image, f"{len(channels)} marker names for {shape[0]} channels")
    if len(set(channels)) != len(channels):
        dup = sorted({c for c in channels if list(channels).count(c) > 1})
        raise S2SInputError(image, f"marker names repeat: {', '.join(dup)}")
    if tuple(mask.shape) != tuple(shape[1:]):
        raise MaskError(image, f"mask shape {tuple(mask.shape)} differs from the image's {tuple(shape[1:])}")
    if not np.issubdtype(np.asarray(mask[:1, :1]).dtype, np.integer):
        raise MaskError(image, "the mask is not an integer label image")
    if not np.any(mask):
        raise MaskError(image, "empty image: the mask holds no cells")


def check_panel(model: S2SModel, channels: Sequence[str], image: str,
                allow_partial_panel: bool = False) -> PanelCoverage:
    """Which of the model's markers ``channels`` carries; too few is refused (before measuring)
    unless ``allow_partial_panel``."""
    coverage = model.panel_coverage(list(channels))
    if coverage.present and not coverage.ok and not allow_partial_panel:
        raise PanelCoverageError(image, coverage.refusal())
    return coverage


def annotate_cells(model: S2SModel, cells: pd.DataFrame, markers: Sequence[str], image: str, *,
                   batch_size: int | None = None, progress: Progress | None = None,
                   threads: int | None = None, allow_partial_panel: bool = False,
                   coverage: PanelCoverage | None = None, timings: dict | None = None) -> Annotation:
    """Predict the measured ``cells`` of one image and merge: see the module doc."""
    t0 = time.perf_counter()
    markers = list(markers)
    coverage = coverage or check_panel(model, markers, image, allow_partial_panel)
    cellset = model.prepare(cells, markers, image, source=image)
    pred = model.predict_cells(cellset, image=image, batch_size=batch_size, progress=progress, source=image,
                               threads=threads, allow_partial_panel=allow_partial_panel)
    timings = dict(timings or {})
    timings["predict_s"] = time.perf_counter() - t0
    st = pred.image_status
    return Annotation(image=image, cells=cells, table=merge_predictions(cells, pred, image), predictions=pred,
                      model=model, markers=markers, cellset=cellset, coverage=coverage,
                      seconds=sum(timings.values()), timings=timings,
                      image_status=st.iloc[0].to_dict() if len(st) else {}, cancelled=bool(pred.cancelled),
                      type_labels=list(model.type_labels), status_labels=list(model.status_labels),
                      used_markers=list(pred.used_markers), unknown_markers=list(pred.unknown_markers))


def annotate_image(model: S2SModel, image, mask: np.ndarray, channels: Sequence[str] | None = None,
                   name: str | None = None, *, pixel_size_um: float | None = None, batch_size: int | None = None,
                   progress: Progress | None = None, threads: int | None = None,
                   allow_partial_panel: bool = False, stage: Callable[[str], None] | None = None) -> Annotation:
    """Check, measure and annotate one image with its mask: an :class:`~spatial2sentence.io.IMCImage`
    (its channels, name and pixel size are used unless given) or a channels x height x width array
    named by ``channels``. ``stage(text)`` hears what is being done."""
    stage = stage or (lambda text: None)
    if isinstance(image, IMCImage):
        data, channels = image.data, image.channels if channels is None else channels
        name = name or image.name
        pixel_size_um = image.pixel_size_um if pixel_size_um is None else pixel_size_um
    else:
        data = image
    name = name or "image"
    channels = [str(c).strip() for c in (channels or [])]
    check_arrays(data, channels, mask, name)
    coverage = check_panel(model, channels, name, allow_partial_panel)
    stage("measuring cells")
    t0 = time.perf_counter()
    cells = measure_cells(data, np.asarray(mask), channels=channels, pixel_size_um=pixel_size_um,
                          source=getattr(image, "path", None) or name)
    stage(f"predicting {len(cells)} cells")
    return annotate_cells(model, cells, channels, name, batch_size=batch_size, progress=progress,
                          threads=threads, allow_partial_panel=allow_partial_panel, coverage=coverage,
                          timings={"measure_s": time.perf_counter() - t0})
