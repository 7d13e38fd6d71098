"""The annotation run behind the dock widget and the headless demo: no Qt here.

:func:`annotate_steps` is a generator (what ``napari.qt.threading.thread_worker`` runs) around the
core's :func:`spatial2sentence.annotate.annotate_image` (check, measure, predict, merge), run in a
helper thread (:mod:`._bridge`): it yields ``("stage", text)`` and ``("progress", done, total)``
messages and returns the core's :class:`~spatial2sentence.annotate.Annotation`. Cancelling (a
``threading.Event``) stops the model between batches.
"""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from typing import TYPE_CHECKING

from spatial2sentence.aliases import canonical_marker

from ._bridge import in_thread, run_in_thread

if TYPE_CHECKING:
    from spatial2sentence.annotate import Annotation

__all__ = ["annotate", "annotate_steps", "distinctive_marker", "explain_all_steps",
           "order_from", "warm_up"]


def warm_up(path: str | Path | None = None, device: str = "auto") -> threading.Thread:
    """Load the model and run one tiny prediction in a background thread, so that the first Run does not
    wait for importing torch, reading the weights and torch's first-call setup (6.6-7.7 s of a 9.4-10.5 s
    first Run before the warm-up existed, issue 20; transformers is no longer imported for our Llama models,
    spatial2sentence.lite_llama). Errors are left for the Run to report."""

    def work():
        try:
            # the core (and torch, seconds) is imported here, off napari's GUI thread, as the widget opens
            from spatial2sentence.annotate import load_model

            model = load_model(path, device)
            rng = np.random.default_rng(0)
            n = 12
            cells = pd.DataFrame({"Object": np.arange(1, n + 1), "x": rng.uniform(0, 60, n),
                                  "y": rng.uniform(0, 60, n)})
            for m in model.markers:
                cells[m] = rng.gamma(2.0, 1.0, n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.predict_cells(cells, threads=1)
        except Exception:  # noqa: BLE001 - the Run that follows reports the problem to the user
            pass

    thread = threading.Thread(target=work, name="s2s-warm-up", daemon=True)
    thread.start()
    return thread


def annotate_steps(data: np.ndarray, channels: list[str], mask: np.ndarray, image: str = "image",
                   pixel_size_um: float = 1.0, model=None, model_path=None, device: str = "auto",
                   batch_size: int | None = None, cancel: threading.Event | None = None,
                   allow_partial_panel: bool = False):
    """Generator: measure + predict one image; see the module doc. Bad arrays are refused before the
    model loads; an image carrying too few of the model's markers is refused before measuring
    (:class:`~spatial2sentence.domain.PanelCoverageError`) unless ``allow_partial_panel``."""
    # the core is imported here, in the worker's thread: importing it loads torch (seconds), which must
    # not block napari's GUI thread (benchmarks/cold_start.py: opening the widget)
    from spatial2sentence.annotate import annotate_image, check_arrays, load_model

    cancel = cancel or threading.Event()
    t0 = time.perf_counter()
    channels = [str(c).strip() for c in channels]
    check_arrays(data, channels, mask, image)
    if model is None:
        yield ("stage", "loading model")
        model = load_model(model_path, device)
    model_s = time.perf_counter() - t0

    def work(emit):
        def progress(done, total):
            emit(("progress", int(done), int(total)))
            return not cancel.is_set()

        return annotate_image(model, np.asarray(data), np.asarray(mask), channels, image,
                              pixel_size_um=pixel_size_um, batch_size=batch_size, progress=progress,
                              allow_partial_panel=allow_partial_panel, stage=lambda t: emit(("stage", t)))

    ann = yield from run_in_thread(work, cancel, name="s2s-annotate")
    ann.timings["model_s"] = model_s
    ann.seconds = time.perf_counter() - t0
    return ann


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
    from . import _explain  # in the worker's thread: it imports the core's explainer (torch)

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
