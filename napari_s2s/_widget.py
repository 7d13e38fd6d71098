"""The "Annotate cells" dock widget: the inputs, Run / Cancel, and the views of the result.

Inputs: the channel layers of one image (found automatically, :mod:`._inputs`: layers made by this
plugin's reader carry ``metadata["s2s"]``; other 2-D image layers are grouped by shape; a 3-D image
layer is read as channels x y x x), the mask (a Labels layer), marker names (editable), the model
(embedded default or a folder) and the device. Run starts a napari worker around
:func:`._annotate.annotate_steps`; the dock's own progress bar counts the cells predicted and the
status line says what is being done; Cancel stops it between batches. Errors are one line in the
status line and a napari notification.

The result is shown by three views that read the run's state from this widget: the Results box
(:mod:`._results`: the mask recoloured by type, the legend, class-ID / confidence / low-confidence
layers, the image's clinical status, exports), the attribution map (:mod:`._attribution_map`) and the
cell explanations (:mod:`._explain_view`: click a cell).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QWidget

from spatial2sentence.errors import S2SInputError

from ._annotate import annotate_steps, warm_up
from ._attribution_map import AttributionMap
from ._controls import (DEVICES, RunControls, dock_of, fit_width, folder_row, is_deleted, model_inputs, one_line,
                        scroll_body)
from ._controls import notify as _notify
from ._explain_view import CellExplainer
from ._inputs import LayerInputs
from ._results import ResultsView, run_summary

if TYPE_CHECKING:  # the core (torch) is not imported when napari builds the widget
    from spatial2sentence.annotate import Annotation

_one_line = partial(one_line, failure="Annotation failed")


class AnnotateCellsWidget(LayerInputs, QWidget):
    """The dock. The run's state, which the views read: ``annotation`` (the last result, None before
    one), ``mask_layer`` (its mask), ``run_channels`` (its channel layers), ``cellset`` (its prepared
    cells), ``_attributions`` (``{str(object): attribution}`` of that annotation, filled by the cell
    explanations and the attribution map) and ``attribution_worker`` (the attributions worker running
    now: a cell's or the whole image's)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.annotation: Annotation | None = None
        self.cellset = None
        self.mask_layer = None
        self.run_channels: list = []
        self.worker = None
        self.attribution_worker = None
        self.last_run_seconds: float | None = None
        self._attributions: dict[str, dict] = {}
        self._cancel: threading.Event | None = None
        self._pending = None
        self._groups: dict[str, list] = {}
        self._status_is_error = False
        # the viewer closed while a worker runs: stop the workers (their callbacks then find the widgets
        # deleted and return) instead of letting them emit into deleted Qt objects
        jobs = self._jobs = []
        self.destroyed.connect(lambda *_: [e.set() for e in jobs])
        self.explainer = CellExplainer(self)
        root = scroll_body(self)
        root.addWidget(self._input_box())
        self.controls = RunControls(root, self.run, self.cancel)
        self.run_button = self.controls.run_button
        self.cancel_button = self.controls.cancel_button
        self.status_label = self.controls.status_label
        self.attribution_map = AttributionMap(self)
        self.results = ResultsView(self, self.attribution_map)
        root.addWidget(self.results)
        root.addStretch(1)
        fit_width(self, 360)
        for signal in (self.image_combo.currentIndexChanged, self.mask_combo.currentIndexChanged,
                       self.markers_edit.textEdited, self.model_edit.textChanged,
                       self.device_combo.currentIndexChanged, self.partial_check.toggled):
            signal.connect(self._clear_error)
        # the default model loads (and runs once) in the background while the user picks the layers
        self.warm_up = warm_up(None, "auto") if not self.model_edit.text().strip() else None
        for name in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, name).connect(self._refresh_layers)
        self._refresh_layers()

    def _input_box(self) -> QGroupBox:
        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.layer_rows(form, "One marker name per channel, in channel order (from the layer names or the OME "
                              "metadata). Edit them if the names are wrong.")
        self.markers_edit.setPlaceholderText("marker names in channel order, comma-separated")
        self.model_edit, self.device_combo = model_inputs()
        form.addRow("Model", folder_row(self.model_edit, "spatial2sentence model folder"))
        form.addRow("Device", self.device_combo)
        self.partial_check = QCheckBox("Allow a partial panel")
        self.partial_check.setToolTip(
            "Predict even when the image carries fewer of the model's markers than the model needs; "
            "the calls are then unreliable. Better: train a model on your own panel.")
        form.addRow("", self.partial_check)
        return box

    @property
    def explanation(self):
        """The Cell explanation panel (None until a cell is explained)."""
        return self.explainer.panel

    # ------------------------------------------------------------------------------------- shared
    def notify(self, kind: str, message: str) -> None:
        """A napari notification (the views' messages go through here)."""
        _notify(kind, message)

    def new_job(self) -> threading.Event:
        """A cancel event for a worker; set when the widget is destroyed."""
        event = threading.Event()
        self._jobs.append(event)
        return event

    def end_job(self, event: threading.Event) -> None:
        if event in self._jobs:
            self._jobs.remove(event)

    def prepared_cells(self):
        """The run's prepared cells (partners, neighbourhoods), prepared again if the run kept none."""
        if self.cellset is None:
            ann = self.annotation
            self.cellset = ann.model.prepare(ann.cells, ann.markers, ann.image, source=ann.image)
        return self.cellset

    def show_controls(self):
        """Bring the "Annotate cells" tab to the front."""
        dock = dock_of(self)
        if dock is not None:
            dock.raise_()

    # ------------------------------------------------------------------------------------- running
    def run(self):
        """Start the annotation worker; returns it (or None when the inputs are unusable)."""
        t_start = time.perf_counter()
        if self.worker is not None:
            _notify("warning", "An annotation is already running; cancel it first")
            return None
        model_path = self.model_edit.text().strip() or None
        device = DEVICES[self.device_combo.currentText()]
        try:
            image, data, markers, mask_layer, ps = self.current_inputs()
            # the core's checks of the model folder and the device, so that a wrong choice is refused
            # here, at once (the worker's load_model runs the same device check on the way); imported
            # now, not with the widget: by the time Run is pressed the warm-up has usually loaded torch
            from spatial2sentence.model import check_model_dir, resolve_device

            if model_path is not None:
                model_path = str(Path(model_path).expanduser())
                check_model_dir(model_path)
            resolve_device(device)
        except S2SInputError as err:
            self._error(_one_line(err))
            return None
        self._cancel = self.new_job()
        self._pending = (mask_layer, t_start)
        self.run_channels = list(self._groups.get(self.image_combo.currentText(), []))
        self._clear_error()
        self.worker = self.controls.launch(
            self, annotate_steps, data, markers, np.asarray(mask_layer.data), image=image, pixel_size_um=ps,
            model_path=model_path, device=device, cancel=self._cancel,
            allow_partial_panel=self.partial_check.isChecked(), status=f"Annotating {image}…")
        return self.worker

    def cancel(self):
        if self._cancel is not None:
            self._cancel.set()
        if self.worker is not None:
            self.worker.quit()

    def _on_yielded(self, msg):
        if is_deleted(self.status_label) or not msg:  # the viewer was closed during the run
            return
        if msg[0] == "stage":
            self.status_label.setText(msg[1].capitalize() + "…")
        elif msg[0] == "progress":
            self.controls.progress(msg[1], msg[2])

    def _on_returned(self, ann: Annotation):
        if is_deleted(self.status_label) or ann is None:  # the viewer was closed during the run
            return
        if ann.cancelled or (self._cancel is not None and self._cancel.is_set()):
            self.status_label.setText("Cancelled")
            _notify("info", "Annotation cancelled")
            return
        mask_layer, t0 = self._pending
        try:
            self.show_annotation(ann, mask_layer)
        except Exception as err:  # never a traceback dialog
            _notify("error", _one_line(err))
            return
        self.last_run_seconds = time.perf_counter() - t0

    def _on_errored(self, err):
        if is_deleted(self.status_label):  # the viewer was closed during the run
            return
        self._error(_one_line(err))

    def _error(self, message: str) -> None:
        """An error in the status line (red) and as a notification; it goes away as soon as the inputs
        change or a run starts, so the line never shows an error that no longer holds."""
        self.status_label.setText(message)
        self.status_label.setStyleSheet("color:#ff6b6b;")
        self._status_is_error = True
        _notify("error", message)

    def _clear_error(self, *_):
        if self._status_is_error and not is_deleted(self.status_label):
            self.status_label.setText("")
            self.status_label.setStyleSheet("")
            self._status_is_error = False

    def _on_aborted(self):
        if is_deleted(self.status_label):  # the viewer was closed during the run
            return
        if self._cancel is not None:
            self._cancel.set()
        self.status_label.setText("Cancelled")

    def _on_finished(self):
        if is_deleted(self.status_label):  # the viewer was closed during the run
            return
        self.worker = None
        self.controls.running(False)

    # ------------------------------------------------------------------------------------- result
    def show_annotation(self, ann: Annotation, mask_layer):
        """Show a finished run in the views: the mask coloured, the derived layers, the legend and the
        status, the attribution box; a click on a cell explains it from now on."""
        self.attribution_map.reset()  # the previous run's map: stopped, no longer shown
        self.annotation, self.mask_layer, self.cellset = ann, mask_layer, ann.cellset
        self._attributions = {}
        self.results.paint(ann, mask_layer)
        self.explainer.watch(mask_layer)
        self.viewer.layers.selection.active = mask_layer
        self.attribution_map.fill(ann)
        self.status_label.setText(run_summary(ann))
        if ann.unknown_markers:
            _notify("warning", f"{ann.image}: the model does not know the markers {', '.join(ann.unknown_markers)}; "
                               "they were ignored")
