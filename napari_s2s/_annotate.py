"""The annotation run behind the dock widget and the headless demo: no Qt here.

:func:`annotate_steps` is a generator (what ``napari.qt.threading.thread_worker`` runs): it checks the
inputs, loads the model, measures the cells with :func:`spatial2sentence.measure.measure_cells` and
predicts with :meth:`spatial2sentence.model.S2SModel.predict_cells`, yielding ``("stage", text)`` and
``("progress", done, total)`` messages, and returns an :class:`Annotation`. Cancelling (a
``threading.Event``) stops the model between batches.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spatial2sentence.errors import MaskError, S2SInputError

from ._bridge import in_thread

_MODELS: dict = {}  # (path, device) -> S2SModel, so a second run does not reload
# one lock for every load: a run asking for the model while the warm-up loads it waits for that load
# instead of loading it a second time, and two loads never import transformers at once from two threads
# (its lazy modules then fail with "cannot import name 'AutoConfig'", seen in benchmarks/cold_start.py)
_LOAD_LOCK = threading.Lock()


@dataclass
class Annotation:
    image: str
    cells: pd.DataFrame  # measured cells: Object, x, y (um), area, markers
    table: pd.DataFrame  # one row per cell: Object, x, y, area, predictions (cell_type, p_*, status...)
    image_status: dict  # status, status_probability, p_status_<label>
    type_labels: list[str]
    status_labels: list[str]
    markers: list[str]  # the cells table's marker columns (the names the user gave)
    unknown_markers: list[str]
    used_markers: list[str]
    model: object
    seconds: float = 0.0
    cancelled: bool = False
    timings: dict = field(default_factory=dict)
    cellset: object = None  # the model's prepared cells (partners), reused by the explanations
    coverage: object = None  # spatial2sentence.domain.PanelCoverage: the model's markers present


def load_model(path: str | Path | None = None, device: str = "auto"):
    """The model (``None``: the embedded default), cached per (path, device)."""
    from spatial2sentence.model import DEFAULT_MODEL_DIR, S2SModel

    from spatial2sentence.model import resolve_device

    device = (device or "auto").lower()
    # the core's one device check (CUDA asked for but absent: a clear error); the cache is keyed by the
    # device it resolves to, so "auto" on a machine without CUDA shares the "cpu" model
    resolved = str(resolve_device(device))
    if path is None or str(path) == "":
        if not (DEFAULT_MODEL_DIR / "s2s_config.json").exists():
            raise S2SInputError(DEFAULT_MODEL_DIR, "the embedded default model is not installed; "
                                                   "choose a model folder")
        path = None
    key = (str(Path(path).resolve()) if path is not None else None, resolved)
    with _LOAD_LOCK:
        if key not in _MODELS:
            _MODELS[key] = S2SModel.from_pretrained(path, device=device)
        return _MODELS[key]


def warm_up(path: str | Path | None = None, device: str = "auto") -> threading.Thread:
    """Load the model and run one tiny prediction in a background thread, so that the first Run does not
    wait for importing torch and transformers, reading the weights and torch's first-call setup
    (6.6-7.7 s of a 9.4-10.5 s first Run, issue 20). Errors are left for the Run to report."""

    def work():
        try:
            model = load_model(path, device)
            rng = np.random.default_rng(0)
            n = 12
            cells = pd.DataFrame({"Object": np.arange(1, n + 1), "x": rng.uniform(0, 60, n),
                                  "y": rng.uniform(0, 60, n)})
            for m in model.markers:
                cells[m] = rng.gamma(2.0, 1.0, n)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.predict_cells(cells, threads=1)
        except Exception:  # noqa: BLE001 - the Run that follows reports the problem to the user
            pass

    thread = threading.Thread(target=work, name="s2s-warm-up", daemon=True)
    thread.start()
    return thread


def check_inputs(data: np.ndarray, channels: list[str], mask: np.ndarray | None, image: str = "image") -> None:
    """Shape and content checks, as one-line :class:`S2SInputError` messages."""
    if mask is None:
        raise MaskError(image, "no mask: add a Labels layer with the cell segmentation (0 = background)")
    data = np.asarray(data) if not hasattr(data, "shape") else data
    if data.ndim != 3:
        raise S2SInputError(image, f"expected channels x height x width, got an array of shape {data.shape}")
    if len(channels) != data.shape[0]:
        raise S2SInputError(image, f"{len(channels)} marker names for {data.shape[0]} channels")
    if len(set(channels)) != len(channels):
        dup = sorted({c for c in channels if list(channels).count(c) > 1})
        raise S2SInputError(image, f"marker names repeat: {', '.join(dup)}")
    if tuple(mask.shape) != tuple(data.shape[1:]):
        raise MaskError(image, f"mask shape {tuple(mask.shape)} differs from the image's "
                               f"{tuple(data.shape[1:])}")
    if not np.issubdtype(np.asarray(mask[:1, :1]).dtype, np.integer):
        raise MaskError(image, "the mask is not an integer label image")
    if not np.any(mask):
        raise MaskError(image, "the mask holds no cells")


def _predict_in_thread(model, cells, markers, image, batch_size, cancel: threading.Event,
                       allow_partial_panel: bool = False):
    """Run ``predict_cells`` in a helper thread; yield (done, total) from its progress callback."""
    return in_thread(lambda cb: model.predict_cells(cells, markers=markers, image=image, batch_size=batch_size,
                                                    progress=cb, allow_partial_panel=allow_partial_panel),
                     cancel)


def annotate_steps(data: np.ndarray, channels: list[str], mask: np.ndarray, image: str = "image",
                   pixel_size_um: float = 1.0, model=None, model_path=None, device: str = "auto",
                   batch_size: int | None = None, cancel: threading.Event | None = None,
                   allow_partial_panel: bool = False):
    """Generator: measure + predict one image; see the module doc. An image carrying too few of the
    model's markers is refused before measuring (:class:`~spatial2sentence.domain.PanelCoverageError`)
    unless ``allow_partial_panel``."""
    cancel = cancel or threading.Event()
    t0 = time.perf_counter()
    timings = {}
    channels = [str(c).strip() for c in channels]
    check_inputs(data, channels, mask, image)
    if model is None:
        yield ("stage", "loading model")
        model = load_model(model_path, device)
    timings["model_s"] = time.perf_counter() - t0
    coverage = model.panel_coverage(channels)
    if not coverage.ok and not allow_partial_panel:
        from spatial2sentence.domain import PanelCoverageError

        raise PanelCoverageError(image, coverage.refusal())
    yield ("stage", "measuring cells")
    from spatial2sentence.measure import measure_cells

    t1 = time.perf_counter()
    cells = measure_cells(np.asarray(data), np.asarray(mask), channels=channels, pixel_size_um=pixel_size_um)
    timings["measure_s"] = time.perf_counter() - t1
    yield ("stage", f"predicting {len(cells)} cells")
    t2 = time.perf_counter()
    preds = None
    cellset = model.prepare(cells, channels, image, source=image)  # reused for the explanations
    gen = _predict_in_thread(model, cellset, None, image, batch_size, cancel, allow_partial_panel)
    try:
        while True:
            msg = next(gen)
            if msg is not None:
                yield msg
            else:
                yield None
    except StopIteration as stop:
        preds = stop.value
    timings["predict_s"] = time.perf_counter() - t2
    ann = finish(image, cells, preds, model, channels, time.perf_counter() - t0, timings)
    ann.cellset = cellset
    ann.coverage = coverage
    return ann


def finish(image, cells, preds, model, channels, seconds, timings=None) -> Annotation:
    pc = preds.cells.drop(columns=[c for c in ("image",) if c in preds.cells.columns])
    pc = pc.set_index(pc["Object"].astype(str))
    keep = cells.copy()
    extra = pc.drop(columns=["Object"]).reindex(keep["Object"].astype(str).to_numpy())
    extra.index = keep.index
    table = pd.concat([keep, extra], axis=1)
    table.insert(0, "image", image)
    status = preds.image_status.iloc[0].to_dict() if len(preds.image_status) else {}
    return Annotation(image=image, cells=cells, table=table, image_status=status,
                      type_labels=list(model.type_labels), status_labels=list(model.status_labels),
                      markers=list(channels), unknown_markers=list(preds.unknown_markers),
                      used_markers=list(preds.used_markers), model=model, seconds=seconds,
                      cancelled=bool(preds.cancelled), timings=dict(timings or {}))


def annotate(data, channels, mask, **kwargs) -> Annotation:
    """The whole run without progress (for scripts and the headless demo)."""
    gen = annotate_steps(data, channels, mask, **kwargs)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def explain_all_steps(model, cellset, object_ids, markers=None, cancel: threading.Event | None = None,
                      chunk: int = 32):
    """Generator: attributions of every cell (returns ``{str(object): attribution}``), in chunks of
    ``chunk`` cells in the order given (callers put the cells in view first).

    Yields ``("progress", done, total)`` as cells finish and ``("partial", {str(object): attribution})``
    after each chunk, so the overlay fills in while the rest is computed; ``cancel`` stops between
    cells (the explainer's progress callback returns False) and the cells done so far are returned."""
    from . import _explain

    cancel = cancel or threading.Event()
    object_ids = list(object_ids)
    total = len(object_ids)
    yield ("stage", f"attributions of {total} cells")
    out: dict = {}
    for start in range(0, total, max(1, int(chunk))):
        if cancel.is_set():
            break
        ids = object_ids[start:start + chunk]

        def work(cb, ids=ids, start=start):
            return _explain.explain_cells(model, cellset, ids, markers=markers,
                                          progress=lambda d, t: cb(start + d, total), overview=True)

        gen = in_thread(work, cancel)
        try:
            while True:
                yield next(gen)
        except StopIteration as stop:
            part = stop.value or {}
        out.update(part)
        yield ("progress", min(start + len(ids), total), total)
        yield ("partial", part)
    return out


def order_from(objects, xy, centre) -> list:
    """``objects`` nearest first to ``centre`` (x, y in the same units as ``xy``): the cells in view
    first when ``centre`` is the middle of the canvas."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    d = np.hypot(xy[:, 0] - float(centre[0]), xy[:, 1] - float(centre[1]))
    return [objects[i] for i in np.argsort(d, kind="stable")]


def distinctive_marker(cells: pd.DataFrame, table: pd.DataFrame, markers: list[str],
                       of_type: str | None = None) -> str | None:
    """The marker that most sets a predicted type (default: the most common) apart from the other cells.

    Why: the attribution box starts on it, so the first overlay a user opens is for a marker that
    matters (INS or PIN on an islet of beta cells) rather than the panel's first channel (often a
    histone or DNA). Each marker is arcsinh-transformed (cofactor 1, IMC counts) and z-scored over the
    image's cells; a marker's score is the mean z of the type's cells minus that of the other cells.
    None when fewer than two types are predicted, ``of_type`` is not predicted or no marker varies.
    """
    from spatial2sentence.aliases import canonical_marker

    # the box lists the model's (canonical) names; the cells table has the panel's (CD8a for CD8A)
    by_canon = {canonical_marker(c): c for c in cells.columns}
    column = {m: m if m in cells.columns else by_canon.get(canonical_marker(m)) for m in markers}
    markers = [m for m in markers if column[m] is not None]
    # one image: object ids are unique
    types = pd.Series(table["cell_type"].to_numpy(), index=table["Object"]).reindex(cells["Object"])
    types = types.reset_index(drop=True)
    counts = types.value_counts()
    if len(counts) < 2 or not markers:
        return None
    x = np.arcsinh(cells[[column[m] for m in markers]].to_numpy(dtype=float))
    sd = x.std(0)
    if not (sd > 0).any():
        return None
    z = (x - x.mean(0)) / np.where(sd > 0, sd, np.inf)
    if of_type is None:
        of_type = counts.index[0]
    elif of_type not in counts.index:
        return None
    sel = (types == of_type).to_numpy()
    score = z[sel].mean(0) - z[~sel].mean(0)
    return markers[int(np.argmax(score))]
