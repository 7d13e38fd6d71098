"""The "Annotate cells" dock widget (thin: layers in :mod:`._layers`, the run in :mod:`._annotate`).

Inputs: the channel layers of one image (found automatically: layers made by this plugin's reader carry
``metadata["s2s"]``; other 2-D image layers are grouped by shape; a 3-D image layer is read as
channels x y x x), the mask (a Labels layer), marker names (editable), the model (embedded default or a
folder) and the device. Run starts a ``thread_worker`` generator whose progress shows in napari's
activity dock; Cancel stops it between batches. Results: the mask recoloured by type (features =
predictions), a legend, class-id / confidence / low-confidence layers, the image's clinical status,
per-cell explanations (click a cell), an attribution overlay and exports. Errors are one-line napari
notifications.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QHeaderView,
    QLabel, QLineEdit, QProgressBar, QPushButton, QSizePolicy, QTableWidget, QTableWidgetItem, QVBoxLayout,
    QWidget,
)

from spatial2sentence.aliases import canonical_marker
from spatial2sentence.errors import S2SInputError

from . import _explain, _layers
from ._annotate import Annotation, annotate_steps, distinctive_marker, warm_up
from ._explanation import ExplanationPanel, prob_bar
from ._controls import DEVICES, RunControls, eta_text, fit_width, is_deleted, one_line, scroll_body
from ._inputs import LayerInputs, meta as _meta
from ._controls import notify as _notify


_one_line = partial(one_line, failure="Annotation failed")


def _swatch(color: str, size: int = 14) -> QIcon:
    pm = QPixmap(size, size)
    pm.fill(QColor(color))
    return QIcon(pm)


def _dock_of(widget):
    """The ``QDockWidget`` holding ``widget`` (None when it is not docked)."""
    from qtpy.QtWidgets import QDockWidget

    w = widget.parentWidget()
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


class AnnotateCellsWidget(LayerInputs, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.annotation: Annotation | None = None
        self.cellset = None
        self.mask_layer = None
        self.worker = None
        self._cancel: threading.Event | None = None
        self._groups: dict[str, list] = {}
        self.attribution_worker = None
        self._all_attributions = False
        self._attributions: dict[str, dict] = {}
        self.explanation: ExplanationPanel | None = None
        self._explanation_dock = None
        self.last_run_seconds: float | None = None
        self._attr_cancel: threading.Event | None = None
        self._all_worker = None  # the whole-image attributions' worker while it runs
        self._build_ui()
        # the viewer closed while a worker runs: stop the workers (their callbacks then find the widgets
        # deleted and return) instead of letting them emit into deleted Qt objects
        jobs = self._jobs = []
        self.destroyed.connect(lambda *_: [e.set() for e in jobs])
        ev = self.viewer.layers.events
        for name in ("inserted", "removed", "reordered"):
            getattr(ev, name).connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------------------------- UI
    def _build_ui(self):
        root = scroll_body(self)
        inputs = QGroupBox("Input")
        form = QFormLayout(inputs)
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.mask_combo = QComboBox()
        self.markers_edit = QLineEdit()
        self.markers_edit.setPlaceholderText("marker names in channel order, comma-separated")
        self.markers_edit.setToolTip("One marker name per channel, in channel order (from the layer names "
                                     "or the OME metadata). Edit them if the names are wrong.")
        model_row = QHBoxLayout()
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("embedded default model")
        self.model_edit.setToolTip("A spatial2sentence model folder; empty: the embedded default model")
        browse = QPushButton("Folder…")
        browse.clicked.connect(self._browse_model)
        model_row.addWidget(self.model_edit)
        model_row.addWidget(browse)
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        form.addRow("Image", self.image_combo)
        form.addRow("Mask", self.mask_combo)
        form.addRow("Markers", self.markers_edit)
        form.addRow("Model", model_row)
        form.addRow("Device", self.device_combo)
        self.partial_check = QCheckBox("Allow a partial panel")
        self.partial_check.setToolTip(
            "Predict even when the image carries fewer of the model's markers than the model needs; "
            "the calls are then unreliable. Better: train a model on your own panel.")
        form.addRow("", self.partial_check)
        root.addWidget(inputs)

        self.controls = RunControls(root, self.run, self.cancel)
        self.run_button = self.controls.run_button
        self.cancel_button = self.controls.cancel_button
        self.status_label = self.controls.status_label

        self.results = QGroupBox("Results")
        rl = QVBoxLayout(self.results)
        self.clinical_label = QLabel("")
        self.clinical_label.setWordWrap(True)
        rl.addWidget(self.clinical_label)
        self.clinical_box = QWidget()
        self.clinical_bars = QGridLayout(self.clinical_box)
        self.clinical_bars.setContentsMargins(0, 0, 0, 0)
        self.clinical_bars.setVerticalSpacing(2)
        rl.addWidget(self.clinical_box)
        self.legend = QTableWidget(0, 3)
        self.legend.setHorizontalHeaderLabels(["cell type", "cells", "%"])
        self.legend.verticalHeader().setVisible(False)
        self.legend.setEditTriggers(QTableWidget.NoEditTriggers)
        self.legend.setSelectionMode(QTableWidget.NoSelection)
        hh = self.legend.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.Stretch)
        hh.setSectionResizeMode(1, QHeaderView.ResizeToContents)
        hh.setSectionResizeMode(2, QHeaderView.ResizeToContents)
        self.legend.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        rl.addWidget(self.legend)
        self.opaque_check = QCheckBox("Opaque cell types (channels hidden)")
        self.opaque_check.setToolTip(
            "Draw every cell in its type's colour exactly as in the legend: the mask fully opaque and this "
            "image's channel layers hidden (untick to bring them back). Translucent over additive "
            "channels, a type's colour mixes with the channel colours under it.")
        self.opaque_check.toggled.connect(self.set_opaque_types)
        rl.addWidget(self.opaque_check)
        conf_row = QHBoxLayout()
        conf_lab = QLabel("Outline cells (white) with p below")
        conf_lab.setToolTip("Cells whose predicted type has a probability below this value are outlined in "
                            "the 'low confidence' layer")
        conf_row.addWidget(conf_lab, 1)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(0.5)
        self.threshold_spin.valueChanged.connect(self._update_low_confidence)
        conf_row.addWidget(self.threshold_spin)
        rl.addLayout(conf_row)
        attr_row = QHBoxLayout()
        attr_row.addWidget(QLabel("Attribution of"))
        self.attr_combo = QComboBox()
        self.attr_combo.setToolTip("Colour every cell by how much this marker (or its partners) drove its "
                                   "prediction: red for, blue against")
        attr_row.addWidget(self.attr_combo, 1)
        self.attr_button = QPushButton("Show")
        self.attr_button.clicked.connect(lambda: self.show_attributions(self.attr_combo.currentText()))
        self.attr_combo.currentTextChanged.connect(
            lambda t: self._all_attributions and self.annotation is not None and self._paint_attributions(t))
        attr_row.addWidget(self.attr_button)
        rl.addLayout(attr_row)
        # whole-image attributions: cells done / total, time left, Cancel (hidden when idle)
        self.attr_progress_box = QWidget()
        prow = QHBoxLayout(self.attr_progress_box)
        prow.setContentsMargins(0, 0, 0, 0)
        self.attr_progress = QProgressBar()
        self.attr_progress.setFormat("%v / %m cells")
        self.attr_cancel_button = QPushButton("Cancel")
        self.attr_cancel_button.setToolTip("Stop computing attributions; the cells done so far stay coloured "
                                           "and Show goes on with the others")
        self.attr_cancel_button.clicked.connect(self.cancel_attributions)
        prow.addWidget(self.attr_progress, 1)
        prow.addWidget(self.attr_cancel_button)
        self.attr_progress_box.setVisible(False)
        rl.addWidget(self.attr_progress_box)
        self.attr_eta = QLabel("")
        self.attr_eta.setWordWrap(True)
        self.attr_eta.setVisible(False)
        rl.addWidget(self.attr_eta)
        self.attr_note = QLabel("")
        self.attr_note.setWordWrap(True)
        self.attr_note.setStyleSheet("color:#c0c0c0;font-style:italic;")
        rl.addWidget(self.attr_note)
        exp_row = QHBoxLayout()
        self.csv_button = QPushButton("Export CSV…")
        self.csv_button.clicked.connect(self._export_csv_dialog)
        self.tiff_button = QPushButton("Export class mask…")
        self.tiff_button.clicked.connect(self._export_tiff_dialog)
        exp_row.addWidget(self.csv_button)
        exp_row.addWidget(self.tiff_button)
        rl.addLayout(exp_row)
        root.addWidget(self.results)
        self.results.setEnabled(False)
        root.addStretch(1)
        fit_width(self, 360)
        for signal in (self.image_combo.currentIndexChanged, self.mask_combo.currentIndexChanged,
                       self.markers_edit.textEdited, self.model_edit.textChanged,
                       self.device_combo.currentIndexChanged, self.partial_check.toggled):
            signal.connect(self._clear_error)
        # the default model loads (and runs once) in the background while the user picks the layers
        self.warm_up = warm_up(None, "auto") if not self.model_edit.text().strip() else None

    def _browse_model(self):
        d = QFileDialog.getExistingDirectory(self, "spatial2sentence model folder")
        if d:
            self.model_edit.setText(d)

    # ------------------------------------------------------------------------------------- running
    def run(self):
        """Start the annotation worker; returns it (or None when the inputs are unusable)."""
        from napari.qt.threading import create_worker

        t_start = time.perf_counter()
        if self.worker is not None:
            _notify("warning", "An annotation is already running; cancel it first")
            return None
        model_path = self.model_edit.text().strip() or None
        device = DEVICES[self.device_combo.currentText()]
        try:
            image, data, markers, mask_layer, ps = self.current_inputs()
            from spatial2sentence.model import check_model_dir, resolve_device

            if model_path is not None:  # "model folder not found", before any work
                check_model_dir(Path(model_path).expanduser())
                model_path = str(Path(model_path).expanduser())
            resolve_device(device)  # the core's one device check
        except S2SInputError as err:
            self._error(_one_line(err))
            return None
        self._cancel = threading.Event()
        self._jobs.append(self._cancel)
        self._pending = (mask_layer, t_start)
        self._run_channels = list(self._groups.get(self.image_combo.currentText(), []))
        worker = create_worker(
            annotate_steps, data, markers, np.asarray(mask_layer.data), image=image, pixel_size_um=ps,
            model_path=model_path, device=device, cancel=self._cancel,
            allow_partial_panel=self.partial_check.isChecked(), _ignore_errors=True, _start_thread=False,
        )
        self.worker = worker
        self._clear_error()
        self.controls.start(worker, f"Annotating {image}…", yielded=self._on_yielded,
                            returned=self._on_returned, errored=self._on_errored,
                            aborted=self._on_aborted, finished=self._on_finished)
        return worker

    def cancel(self):
        if self._cancel is not None:
            self._cancel.set()
        if self.worker is not None:
            self.worker.quit()

    def _on_yielded(self, msg):
        if is_deleted(self.status_label):  # the viewer was closed during the run
            return
        if not msg:
            return
        if msg[0] == "stage":
            self.status_label.setText(msg[1].capitalize() + "…")
        elif msg[0] == "progress":
            self.controls.progress(msg[1], msg[2])

    def _on_returned(self, ann: Annotation):
        if is_deleted(self.status_label):  # the viewer was closed during the run
            return
        if ann is None:
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
        if getattr(self, "_status_is_error", False) and not is_deleted(self.status_label):
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

    # ------------------------------------------------------------------------------------- results
    def _layer(self, role: str, image: str):
        for lay in self.viewer.layers:
            m = _meta(lay)
            if m.get("role") == role and m.get("image") == image:
                return lay
        return None

    def _put_labels(self, role, image, data, name, like, **kwargs):
        lay = self._layer(role, image)
        if lay is None:
            lay = self.viewer.add_labels(data, name=name, scale=like.scale, translate=like.translate,
                                         metadata=_layers.s2s_meta(role, image), **kwargs)
        else:
            lay.data = data
            for k, v in kwargs.items():
                setattr(lay, k, v)
        return lay

    def show_annotation(self, ann: Annotation, mask_layer):
        """Colour the mask, fill features, legend and status, and add the derived layers."""
        if self._all_worker is not None:  # attributions of the previous run: stopped, no longer shown
            self.cancel_attributions()
            self._all_worker = None
            self.attr_progress_box.setVisible(False)
            self.attr_eta.setVisible(False)
            self.attr_button.setEnabled(True)
        self.annotation, self.mask_layer, self.cellset = ann, mask_layer, ann.cellset
        self._attributions = {}
        self._all_attributions = False
        t = ann.table
        objects, types = t["Object"].to_numpy(), t["cell_type"].to_numpy(dtype=object)
        mask = np.asarray(mask_layer.data)
        meta = dict(mask_layer.metadata)
        meta["s2s"] = {**_meta(mask_layer), "role": "mask", "image": ann.image, "annotated": True}
        mask_layer.metadata = meta
        mask_layer.colormap = _layers.cell_type_colormap(objects, types, ann.type_labels)
        mask_layer.features = _layers.mask_features(t, ann.type_labels)
        mask_layer.opacity = max(mask_layer.opacity, 0.6)
        cls = _layers.class_id_mask(mask, objects, types, ann.type_labels)
        cls_layer = self._put_labels("class_ids", ann.image, cls, f"{ann.image} class id", mask_layer,
                                     visible=False)
        cls_layer.colormap = _layers.class_id_colormap(ann.type_labels)
        import pandas as pd

        cls_layer.features = pd.DataFrame({"index": np.arange(1, len(ann.type_labels) + 1),
                                           "cell_type": ann.type_labels})
        conf = _layers.lookup(mask, objects, t["cell_type_probability"].to_numpy(np.float32), np.nan, np.float32)
        lay = self._layer("confidence", ann.image)
        if lay is None:
            self.viewer.add_image(conf, name=f"{ann.image} confidence", colormap="viridis", contrast_limits=(0, 1),
                                  scale=mask_layer.scale, translate=mask_layer.translate, visible=False,
                                  metadata=_layers.s2s_meta("confidence", ann.image), blending="translucent")
        else:
            lay.data = conf
        low = self._put_labels("low_confidence", ann.image, mask, f"{ann.image} low confidence", mask_layer)
        low.contour = 1
        self._update_low_confidence()
        self._add_click_callback(mask_layer)
        self.viewer.layers.selection.active = mask_layer
        self._fill_legend(ann)
        if self.opaque_check.isChecked():
            self.set_opaque_types(True)
        self._fill_status(ann)
        self._fill_attr_combo(ann)
        self.results.setEnabled(True)
        n = len(t)
        extra = f"; markers ignored: {', '.join(ann.unknown_markers)}" if ann.unknown_markers else ""
        load = ann.timings.get("model_s", 0.0)
        loaded = f" (incl. {load:.1f} s loading the model)" if load > 0.5 else ""
        cov = ann.coverage
        panel = (f"; {cov.summary()}" + ("" if cov.ok else " (PARTIAL PANEL: calls unreliable)")) if cov else ""
        self.status_label.setText(f"{n} cells of {ann.image} annotated in {ann.seconds:.1f} s{loaded}{extra}{panel}")
        if ann.unknown_markers:
            _notify("warning", f"{ann.image}: the model does not know the markers {', '.join(ann.unknown_markers)}; "
                               "they were ignored")

    def _fill_legend(self, ann):
        rows = _layers.counts_per_type(ann.table["cell_type"].to_numpy(dtype=object), ann.type_labels)
        total = max(1, sum(r[1] for r in rows))
        rows = sorted([r for r in rows if r[1] > 0], key=lambda r: -r[1])
        self.legend.setRowCount(len(rows))
        for i, (lab, cnt, color) in enumerate(rows):
            item = QTableWidgetItem(_swatch(color), lab)
            self.legend.setItem(i, 0, item)
            c = QTableWidgetItem(str(cnt))
            c.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            self.legend.setItem(i, 1, c)
            pc = QTableWidgetItem(_layers.percent_text(cnt, total))
            pc.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            self.legend.setItem(i, 2, pc)
        self.legend.resizeRowsToContents()
        h = self.legend.horizontalHeader().height() + sum(self.legend.rowHeight(i) for i in range(len(rows))) + 4
        self.legend.setFixedHeight(min(h, 300))

    def set_opaque_types(self, flag: bool = True) -> None:
        """Cell types exactly in their legend colours (mask opaque, the image's channels hidden), or
        back to the translucent mask over the channels as they were."""
        ml = self.mask_layer
        if self.opaque_check.isChecked() != bool(flag):
            self.opaque_check.setChecked(bool(flag))  # emits toggled -> here again
            return
        if ml is None or self.annotation is None:
            return
        channels = [lay for lay in getattr(self, "_run_channels", []) if lay in self.viewer.layers]
        if flag:
            if not getattr(self, "_opaque_on", False):  # a second run while opaque keeps the first state
                self._shown_before = {id(lay): lay.visible for lay in channels}
            self._opaque_on = True
            for lay in channels:
                lay.visible = False
            ml.opacity = 1.0
            ml.blending = "translucent"
        else:
            before = getattr(self, "_shown_before", {})
            for lay in channels:
                lay.visible = before.get(id(lay), lay.visible)
            self._opaque_on = False
            ml.opacity = 0.6
        ml.visible = True

    def legend_rows(self) -> list[tuple[str, int]]:
        return [(self.legend.item(i, 0).text(), int(self.legend.item(i, 1).text()))
                for i in range(self.legend.rowCount())]

    def _fill_status(self, ann):
        s = ann.image_status or {}
        while self.clinical_bars.count():
            w = self.clinical_bars.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        if not s.get("status"):
            self.clinical_label.setText("Clinical status: not predicted")
            return
        p = float(s.get("status_probability", np.nan))
        if s.get("status_confident", True):
            self.clinical_label.setText(f"<b>Clinical status of {ann.image}: {s['status']}</b> "
                                        f"(p = {p:.2f}, from {len(ann.table)} cells)")
        else:  # not clearly above chance: no call in bold
            self.clinical_label.setText(f"Clinical status of {ann.image}: uncertain (most likely {s['status']}, "
                                        f"p = {p:.2f}, chance {1 / max(1, len(ann.status_labels)):.2f}; "
                                        f"from {len(ann.table)} cells)")
        colors = _layers.type_colors(ann.status_labels)
        for r, lab in enumerate(ann.status_labels):
            v = float(s.get("p_status_" + str(lab).replace(" ", "_"), np.nan))
            self.clinical_bars.addWidget(QLabel(lab), r, 0)
            self.clinical_bars.addWidget(prob_bar(v, colors[lab]), r, 1)

    def _update_low_confidence(self, *_):
        ann = self.annotation
        if ann is None:
            return
        lay = self._layer("low_confidence", ann.image)
        if lay is None:
            return
        thr = float(self.threshold_spin.value())
        p = ann.table["cell_type_probability"].to_numpy(float)
        lay.colormap = _layers.low_confidence_colormap(ann.table["Object"].to_numpy(), p, thr)
        lay.name = f"{ann.image} low confidence (p < {thr:.2f})"
        n = int(np.sum(~(p >= thr)))
        self.threshold_spin.setToolTip(f"{n} cells below {thr:.2f}, outlined in white")

    # ------------------------------------------------------------------------------ explanations
    def _add_click_callback(self, layer):
        if getattr(layer, "_s2s_click", False):
            return
        layer._s2s_click = True
        layer.mouse_drag_callbacks.append(self._on_mask_click)
        layer.events.selected_label.connect(self._on_selected_label)

    def _on_mask_click(self, layer, event):
        if getattr(event, "button", 1) not in (1, None) or layer.mode not in ("pan_zoom", "pick"):
            return
        start = np.asarray(event.position)
        yield
        moved = False
        while event.type == "mouse_move":
            moved = moved or np.linalg.norm(np.asarray(event.position) - start) > 2 * float(np.max(layer.scale))
            yield
        if moved:
            return
        value = layer.get_value(event.position, view_direction=event.view_direction,
                                dims_displayed=event.dims_displayed, world=True)
        if value is not None and int(value) > 0:
            self.explain_cell(int(value))

    def _on_selected_label(self, event=None):
        if self.mask_layer is None or self.annotation is None:
            return
        v = int(self.mask_layer.selected_label)
        if v > 0 and str(v) in set(self.annotation.table["Object"].astype(str)):
            self.explain_cell(v)

    def _ensure_panel(self) -> ExplanationPanel:
        """The explanation panel, docked as a tab beside this widget's dock on first use, then raised.

        napari's ``add_dock_widget(..., tabify=True)`` tabifies with the last dock of the right area
        (another plugin's, or Batch annotate opened after this one); Qt's own ``tabifyDockWidget`` on
        the two real dock widgets (found through Qt's parent chain: the viewer handed to a widget from
        the Plugins menu is a ``PublicOnlyProxy`` whose return values Qt does not accept) then puts the
        explanation beside Annotate cells."""
        if self.explanation is None:
            self.explanation = ExplanationPanel()
            self.explanation.partner_clicked.connect(lambda o: self.explain_cell(int(o)))
            window = getattr(self.viewer, "window", None)  # a bare ViewerModel has none
            if window is not None:
                window.add_dock_widget(self.explanation, name="Cell explanation", area="right", tabify=True,
                                       add_vertical_stretch=False)
                self._explanation_dock = _dock_of(self.explanation)
                mine = self._own_dock()
                main = mine.parentWidget() if mine is not None else None
                if (main is not None and self._explanation_dock is not None
                        and hasattr(main, "tabifyDockWidget")
                        and self._explanation_dock not in main.tabifiedDockWidgets(mine)):
                    main.tabifyDockWidget(mine, self._explanation_dock)
        if self._explanation_dock is not None:
            self._explanation_dock.show()
            self._explanation_dock.raise_()
        return self.explanation

    def _own_dock(self):
        return _dock_of(self)

    def show_controls(self):
        """Bring the "Annotate cells" tab to the front."""
        dock = self._own_dock()
        if dock is not None:
            dock.raise_()

    def _cellset(self):
        if self.cellset is None:
            ann = self.annotation
            self.cellset = ann.model.prepare(ann.cells, ann.markers, ann.image, source=ann.image)
        return self.cellset

    def explain_cell(self, obj: int, attributions: str = "async") -> dict | None:
        """Fill the explanation panel with cell ``obj`` and draw its partners; returns the info dict.

        The prompt, probabilities and partners appear at once; the word shading (integrated gradients,
        ``spatial2sentence.explain``) follows from a worker (``attributions="async"``), or is computed
        before returning (``"sync"``), or skipped (``"none"``)."""
        ann = self.annotation
        if ann is None:
            return None
        t0 = time.perf_counter()
        try:
            prompt = ann.model.prompts_for(self._cellset(), [obj], markers=ann.markers)[0]
        except S2SInputError as err:
            _notify("warning", _one_line(err))
            return None
        table = self._table_by_object()
        row = table.loc[str(obj)]
        probs = {lab: float(row.get("p_" + str(lab).replace(" ", "_"), np.nan)) for lab in ann.type_labels}
        partners = []
        for p in prompt["partners"]:
            key = str(p["Object"])
            ct = table["cell_type"].get(key) if key in table.index else None
            partners.append({**p, "cell_type": ct if isinstance(ct, str) else None, "score": None})
        words = prompt["text"].split()
        try:
            anchor = words[words.index(":") + 1: words.index(";")]
        except ValueError:
            anchor = []
        info = {
            "object": obj, "image": ann.image,
            "predicted": row["cell_type"] if isinstance(row["cell_type"], str) else None,
            "probability": float(row["cell_type_probability"]), "probabilities": probs,
            "colors": _layers.type_colors(ann.type_labels), "text": prompt["text"], "partners": partners,
            "attribution": None, "note": "", "anchor_markers": anchor,
            # the user's marker names for the model's canonical ones (shown in the prompt and markers)
            "display_names": self.display_names(),
        }
        info["levels"], info["percentiles"] = self._levels([obj] + [p["Object"] for p in partners])
        cached = self._attributions.get(str(obj))
        if cached is not None:
            self._apply_attribution(info, cached)
        elif not _explain.available():
            info["note"] = "attributions unavailable: spatial2sentence.explain is not installed"
        elif attributions == "sync":
            try:
                self._apply_attribution(info, self._explain_one(obj))
            except _explain.AttributionsUnavailable as err:
                info["note"] = str(err)
        elif attributions == "async":
            info["note"] = "computing attributions…"
        self._draw_partners(obj, partners, table)
        panel = self._ensure_panel()
        info["seconds"] = time.perf_counter() - t0
        panel.show_cell(info)
        if attributions == "async" and cached is None and info["note"] == "computing attributions…":
            self._start_cell_attribution(obj, info)
        return info

    def _levels(self, objects) -> tuple[list[dict], dict]:
        """The measured level of every marker (canonical name -> mean counts) of each of ``objects``, and
        for the first one each marker's percentile among the image's cells (0-1)."""
        ann = self.annotation
        if getattr(self, "_cells_cache", (None,))[0] is not ann:
            cols = {canonical_marker(m): m for m in ann.markers if m in ann.cells.columns}
            values = ann.cells[list(cols.values())].to_numpy(dtype=float)
            index = {str(o): i for i, o in enumerate(ann.cells["Object"].tolist())}
            self._cells_cache = (ann, list(cols), values, np.sort(values, axis=0), index)
        _, canon, values, ranked, index = self._cells_cache
        levels = []
        for o in objects:
            i = index.get(str(o))
            levels.append({} if i is None else dict(zip(canon, values[i].tolist())))
        pct = {}
        if levels and levels[0] and len(values):
            row = values[index[str(objects[0])]]
            below = [np.searchsorted(ranked[:, j], row[j], side="left") for j in range(len(canon))]
            pct = {c: float(b) / len(values) for c, b in zip(canon, below)}
        return levels, pct

    def _table_by_object(self):
        ann = self.annotation
        if getattr(self, "_table_cache", (None,))[0] is not ann:
            self._table_cache = (ann, ann.table.set_index(ann.table["Object"].astype(str)))
        return self._table_cache[1]

    def _explain_one(self, obj, ann=None) -> dict:
        ann = ann or self.annotation
        if ann is None:
            raise _explain.AttributionsUnavailable("no annotation (it was cleared or is being re-run)")
        cellset = self._cellset() if ann is self.annotation else None
        if cellset is None:
            raise _explain.AttributionsUnavailable("the annotation changed while attributions were computed")
        res = _explain.explain_cells(ann.model, cellset, [obj], markers=ann.markers)
        att = res.get(str(obj))
        if att is None:
            raise _explain.AttributionsUnavailable("attributions unavailable for this cell")
        self._attributions[str(obj)] = att
        return att

    @staticmethod
    def _apply_attribution(info, att):
        info["attribution"] = att
        scores = {str(p.get("object", p.get("Object"))): p.get("score") for p in att.get("partners", [])}
        for p in info["partners"]:
            sc = scores.get(str(p["Object"]))
            p["score"] = None if sc is None else float(sc)
        info["note"] = ""

    def _start_cell_attribution(self, obj, info):
        from napari.qt.threading import create_worker

        ann = self.annotation
        worker = create_worker(self._explain_one, obj, ann, _ignore_errors=True, _start_thread=False)

        def current() -> bool:
            # the result belongs to this annotation and this cell only: a new run or a new click since
            # the worker started makes it stale; a closed viewer has deleted the panel
            panel = self.explanation
            if panel is None or is_deleted(panel):
                return False
            return (self.annotation is ann and panel is not None and panel.current is not None
                    and panel.current.get("object") == obj)

        def done(att):
            panel = self.explanation
            if current():
                new = dict(panel.current)
                new["partners"] = [dict(p) for p in new["partners"]]
                self._apply_attribution(new, att)
                panel.show_cell(new)
                self._draw_partners(obj, new["partners"], self._table_by_object())

        def failed(err):
            panel = self.explanation
            if current():
                panel.note.setText(str(err).splitlines()[0] if str(err) else "attributions failed")

        def finished():
            if self.attribution_worker is worker:  # back to the whole-image worker, if one runs
                self.attribution_worker = self._all_worker

        cancel = threading.Event()  # set when the widget is destroyed; the worker's result is then dropped
        self._jobs.append(cancel)
        worker.finished.connect(lambda: cancel in self._jobs and self._jobs.remove(cancel))
        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.finished.connect(finished)
        self.attribution_worker = worker
        worker.start()

    def _draw_partners(self, obj, partners, table):
        ann, ml = self.annotation, self.mask_layer
        ps = float(_meta(ml).get("pixel_size_um") or ml.scale[-1] or 1.0)
        ax, ay = float(table.loc[str(obj), "x"]) / ps, float(table.loc[str(obj), "y"]) / ps
        pxy, roles, scores = [], [], []
        for p in partners:
            k = str(p["Object"])
            if k not in table.index:
                continue
            pxy.append((float(table.loc[k, "x"]) / ps, float(table.loc[k, "y"]) / ps))
            roles.append(p["role"])
            scores.append(np.nan if p.get("score") is None else p["score"])
        data, types, colors, widths = _layers.partner_shapes((ax, ay), pxy, roles, scores)
        lay = self._layer("partners", ann.image)
        name = f"{ann.image} partners of cell {obj}"
        if lay is None:
            lay = self.viewer.add_shapes(data, shape_type=types, edge_color=colors, edge_width=widths,
                                         face_color="transparent", name=name, scale=ml.scale,
                                         translate=ml.translate,
                                         metadata=_layers.s2s_meta("partners", ann.image, object=obj))
        else:  # reuse the layer: removing one costs a garbage collection (~0.5 s)
            lay.selected_data = set()
            lay.data = []
            lay.add(data, shape_type=types, edge_color=colors, edge_width=widths, face_color="transparent")
            lay.name = name
            lay.metadata = _layers.s2s_meta("partners", ann.image, object=obj)
        self.viewer.layers.selection.active = ml

    # ------------------------------------------------------------------------------ attributions
    def _fill_attr_combo(self, ann):
        self.attr_combo.clear()
        if not _explain.available():
            self.attr_combo.addItem("attributions unavailable")
            self.attr_combo.setEnabled(False)
            self.attr_button.setEnabled(False)
            self.attr_note.setText("attributions unavailable: spatial2sentence.explain is not installed; "
                                   "explanations show the prompt without word shading")
            return
        self.attr_combo.setEnabled(True)
        self.attr_button.setEnabled(True)
        # the panel's own names (CD45, CDH), the model's canonical one (PTPRC, CDH1) in the tooltip
        names = self.display_names()
        used = {canonical_marker(m) for m in (ann.used_markers or ann.markers)}
        markers = [m for m in ann.markers if canonical_marker(m) in used] or list(ann.markers)
        for m in markers:
            self.attr_combo.addItem(m)
            canon = canonical_marker(m)
            if canon != m:
                self.attr_combo.setItemData(self.attr_combo.count() - 1, f"model's name: {canon}",
                                            Qt.ToolTipRole)
        self.attr_combo.addItem("partners")
        best = distinctive_marker(ann.cells, ann.table, markers)
        if best is not None:
            self.attr_combo.setCurrentText(names.get(canonical_marker(best), best))
        self.attr_note.setText("")

    def display_names(self) -> dict[str, str]:
        """The model's canonical marker name -> the name the user gave (Markers field) for this run."""
        ann = self.annotation
        return {canonical_marker(m): m for m in ann.markers} if ann is not None else {}

    def _cells_in_view_first(self, objects) -> list:
        """The annotation's cells, nearest first to the middle of the canvas (so the part of the image
        the user looks at is coloured first)."""
        from ._annotate import order_from

        ann, ml = self.annotation, self.mask_layer
        t = ann.table.set_index(ann.table["Object"].astype(str))
        xy = t.loc[[str(o) for o in objects], ["x", "y"]].to_numpy(float)
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9: viewer.scene.camera
        camera = scene.camera if scene is not None else self.viewer.camera
        centre = np.asarray(camera.center, dtype=float)[-2:]  # world (y, x)
        translate = np.asarray(ml.translate, dtype=float)[-2:]
        y, x = centre - translate  # world units are um (layers are scaled by the pixel size)
        return order_from(list(objects), xy, (x, y))

    def show_attributions(self, what: str):
        """Colour every cell by how much ``what`` (a marker or ``"partners"``) drove its prediction.

        The attributions of all cells are computed once, in a worker: the cells in view first, in chunks
        painted as they finish, with a progress bar (cells done / total), the time left and Cancel
        (returns the worker, so callers can wait on it). Cancelled, the cells done stay and the next
        Show computes only the others. Once all are there, a call repaints at once (returns the layer)."""
        from napari.qt.threading import create_worker

        from ._annotate import explain_all_steps

        ann = self.annotation
        if ann is None or not what:
            return None
        if not _explain.available():
            self.attr_note.setText("attributions unavailable: spatial2sentence.explain is not installed")
            _notify("warning", "attributions unavailable: spatial2sentence.explain is not installed")
            return None
        if what != "partners":  # the user's name of the marker, whichever name was asked for
            what = self.display_names().get(canonical_marker(what), what)
        if self.attr_combo.findText(what) >= 0 and self.attr_combo.currentText() != what:
            self.attr_combo.blockSignals(True)
            self.attr_combo.setCurrentText(what)
            self.attr_combo.blockSignals(False)
        if self._all_attributions:
            return self._paint_attributions(what)
        if self._all_worker is not None:  # already computing every cell
            return self._all_worker
        objects = ann.table["Object"].tolist()
        todo = [o for o in self._cells_in_view_first(objects) if str(o) not in self._attributions]
        if not todo:
            self._all_attributions = True
            return self._paint_attributions(what)
        cancel = self._attr_cancel = threading.Event()
        self._jobs.append(cancel)
        worker = create_worker(explain_all_steps, ann.model, self._cellset(), todo, markers=ann.markers,
                               cancel=cancel, _ignore_errors=True, _start_thread=False)
        total, t0 = len(todo), time.perf_counter()
        painted = [0.0]

        def alive() -> bool:
            return not is_deleted(self.attr_note) and self.annotation is ann

        def step(msg):
            if not msg or not alive():
                return
            if msg[0] == "progress":
                done = int(msg[1])
                self.attr_progress.setRange(0, total)
                self.attr_progress.setValue(min(done, total))
                self.attr_eta.setText(eta_text(done, total, time.perf_counter() - t0)
                                      + " (integrated gradients; the cells in view first)")
            elif msg[0] == "partial":
                self._attributions.update(msg[1])
                now = time.perf_counter()
                if now - painted[0] > 1.0:  # repaint what is done, at most once a second
                    painted[0] = now
                    self._paint_attributions(self.attr_combo.currentText() or what, partial=True)

        def done(res):
            if not alive():
                return
            self._attributions.update(res or {})
            self._all_attributions = all(str(o) in self._attributions for o in objects)
            self._paint_attributions(self.attr_combo.currentText() or what, partial=not self._all_attributions)

        def failed(err):
            if not alive():
                return
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            self.attr_note.setText(f"attributions failed: {msg}")
            _notify("error", f"attributions failed: {msg}")

        def finished():
            if cancel in self._jobs:
                self._jobs.remove(cancel)
            if is_deleted(self.attr_note):
                return
            if self._all_worker is worker:
                self._all_worker = None
            if self.attribution_worker is worker:
                self.attribution_worker = None
            self.attr_progress_box.setVisible(False)
            self.attr_eta.setVisible(False)
            self.attr_button.setEnabled(True)

        worker.yielded.connect(step)
        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.finished.connect(finished)
        self.attribution_worker = self._all_worker = worker
        self.attr_progress.setRange(0, total)
        self.attr_progress.setValue(0)
        self.attr_progress_box.setVisible(True)
        self.attr_eta.setText(f"0 / {total} cells (integrated gradients; the cells in view first)")
        self.attr_eta.setVisible(True)
        self.attr_button.setEnabled(False)
        self.attr_note.setText("")
        # the progress in view, not below the fold (once the layout has made room for it)
        QTimer.singleShot(100, lambda: is_deleted(self.attr_eta) or self.scroll_area.ensureWidgetVisible(self.attr_eta))
        worker.start()
        return worker

    def cancel_attributions(self):
        """Stop the whole-image attributions; the cells done so far stay coloured."""
        if self._attr_cancel is not None:
            self._attr_cancel.set()
        if self._all_worker is not None:
            self.attr_eta.setText("Cancelling…")

    def _paint_attributions(self, what: str, partial: bool = False):
        ann = self.annotation
        attrs = self._attributions
        objects = ann.table["Object"].to_numpy()
        scores = np.array([_layers.score_of(attrs[str(o)], what) if str(o) in attrs else np.nan
                           for o in objects], dtype=float)
        cmap, vmax = _layers.attribution_colormap(objects, scores)
        n_done = sum(str(o) in attrs for o in objects)
        if partial:  # cells not computed yet: left clear (grey means "not in the cell's prompt")
            for o in objects:
                if str(o) not in attrs:
                    cmap.color_dict[int(o)] = _layers.TRANSPARENT
            cmap = type(cmap)(color_dict=dict(cmap.color_dict), background_value=0)
        lay = self._put_labels("attribution", ann.image, np.asarray(self.mask_layer.data),
                               f"{ann.image} attribution", self.mask_layer)
        lay.colormap = cmap
        lay.opacity = 0.9
        lay.name = f"{ann.image} attribution: {what}"
        lay.metadata = _layers.s2s_meta("attribution", ann.image, what=what, vmax=vmax)
        self.attr_note.setText(f"Cells coloured by the attribution of {what} to their predicted type: "
                               f"red = drove it, blue = against it, white = no effect, grey = not in the cell's prompt "
                               f"(max |score| {vmax:.2g})"
                               + (f"; {n_done} of {len(objects)} cells so far, the others left clear"
                                  if partial else ""))
        self.viewer.layers.selection.active = self.mask_layer
        return lay

    # ------------------------------------------------------------------------------------ export
    def export_csv(self, path) -> Path:
        from spatial2sentence.io import write_csv_atomic

        if self.annotation is None:
            raise S2SInputError(None, "nothing to export: run the annotation first")
        return write_csv_atomic(self.annotation.table, path)

    def export_class_mask(self, path) -> Path:
        from spatial2sentence.io import write_tiff_atomic

        ann = self.annotation
        if ann is None:
            raise S2SInputError(None, "nothing to export: run the annotation first")
        cls = _layers.class_id_mask(np.asarray(self.mask_layer.data), ann.table["Object"].to_numpy(),
                                    ann.table["cell_type"].to_numpy(dtype=object), ann.type_labels)
        out = write_tiff_atomic(path, cls)
        import pandas as pd
        from spatial2sentence.io import write_csv_atomic

        write_csv_atomic(pd.DataFrame({"class_id": np.arange(1, len(ann.type_labels) + 1),
                                       "cell_type": ann.type_labels}),
                         Path(path).with_name(Path(path).name.split(".")[0] + "_classes.csv"))
        return out

    def _export_dialog(self, title: str, default_name: str, filters: str, export, done: str):
        if self.annotation is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, title, default_name, filters)
        if path:
            try:
                export(path)
                _notify("info", f"Wrote {path}{done}")
            except (S2SInputError, OSError) as err:
                _notify("error", _one_line(err) if isinstance(err, S2SInputError) else f"{path}: {err.strerror}")

    def _export_csv_dialog(self):
        name = self.annotation.image if self.annotation is not None else "image"
        self._export_dialog("Per-cell predictions", f"{name}_cells.csv", "CSV (*.csv)", self.export_csv, "")

    def _export_tiff_dialog(self):
        name = self.annotation.image if self.annotation is not None else "image"
        self._export_dialog("Class-id mask", f"{name}_classes.tiff", "TIFF (*.tiff *.tif)",
                            self.export_class_mask, " (class ids listed in *_classes.csv)")
