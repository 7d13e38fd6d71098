"""The "Results" box of the Annotate cells dock: one annotation painted into the viewer and summed up.

:meth:`ResultsView.paint` colours the mask by predicted type (its ``features`` are the predictions) and
adds or refreshes the run's derived layers (class ID, confidence, low-confidence outline), found again
by their ``metadata["s2s"]`` role and image (:mod:`._layers`). The box shows the image's clinical
status with a bar per label, the legend (cells and share per type), the display options (opaque cell
types, the low-confidence threshold), the attribution map's controls (:mod:`._attribution_map`) and
the exports. It reads the run's state from the dock widget (``owner``: ``annotation``, ``mask_layer``,
``viewer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pathlib import Path

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox, QDoubleSpinBox, QFileDialog, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
    QPushButton, QSizePolicy, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from spatial2sentence.labels import paint_labels
from spatial2sentence.errors import S2SInputError
from spatial2sentence.io import write_csv_atomic, write_tiff_atomic

from . import _layers
from ._controls import one_line
from ._explanation import ProbBars
from ._inputs import meta

if TYPE_CHECKING:  # the core (torch) is not imported when napari builds the widget
    from spatial2sentence.annotate import Annotation


def swatch(color: str, size: int = 14) -> QIcon:
    pm = QPixmap(size, size)
    pm.fill(QColor(color))
    return QIcon(pm)


def find_layer(viewer, role: str, image: str):
    """The layer this plugin made in ``role`` for ``image`` (None when there is none)."""
    for lay in viewer.layers:
        m = meta(lay)
        if m.get("role") == role and m.get("image") == image:
            return lay
    return None


def put_labels(viewer, role: str, image: str, data, name: str, like, **kwargs):
    """The Labels layer of ``role`` for ``image``: the existing one given ``data`` (and ``kwargs`` as
    attributes), else a new one placed like the layer ``like``."""
    lay = find_layer(viewer, role, image)
    if lay is None:
        lay = viewer.add_labels(data, name=name, scale=like.scale, translate=like.translate,
                                metadata=_layers.s2s_meta(role, image), **kwargs)
    else:
        lay.data = data
        for k, v in kwargs.items():
            setattr(lay, k, v)
    return lay


def run_summary(ann: Annotation) -> str:
    """The status line after a run: cells, time, the model's loading time, markers ignored, panel coverage."""
    extra = f"; markers ignored: {', '.join(ann.unknown_markers)}" if ann.unknown_markers else ""
    load = ann.timings.get("model_s", 0.0)
    loaded = f" (incl. {load:.1f} s loading the model)" if load > 0.5 else ""
    cov = ann.coverage
    panel = (f"; {cov.summary()}" + ("" if cov.ok else " (PARTIAL PANEL: calls unreliable)")) if cov else ""
    return f"{len(ann.table)} cells of {ann.image} annotated in {ann.seconds:.1f} s{loaded}{extra}{panel}"


def _legend_table() -> QTableWidget:
    legend = QTableWidget(0, 3)
    legend.setHorizontalHeaderLabels(["cell type", "cells", "%"])
    legend.verticalHeader().setVisible(False)
    legend.setEditTriggers(QTableWidget.NoEditTriggers)
    legend.setSelectionMode(QTableWidget.NoSelection)
    hh = legend.horizontalHeader()
    hh.setSectionResizeMode(0, QHeaderView.Stretch)
    hh.setSectionResizeMode(1, QHeaderView.ResizeToContents)
    hh.setSectionResizeMode(2, QHeaderView.ResizeToContents)
    legend.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
    return legend


class ResultsView(QGroupBox):
    """The Results box; ``attribution_map``: the attribution controls, placed above the exports."""

    def __init__(self, owner, attribution_map: QWidget):
        super().__init__("Results")
        self.owner = owner
        self._opaque_on = False
        self._shown_before: dict[int, bool] = {}  # channel layer -> visible, before "opaque" hid it
        rl = QVBoxLayout(self)
        self.clinical_label = QLabel("")
        self.clinical_label.setWordWrap(True)
        rl.addWidget(self.clinical_label)
        self.clinical_bars = ProbBars()
        rl.addWidget(self.clinical_bars)
        self.legend = _legend_table()
        rl.addWidget(self.legend)
        self.opaque_check = QCheckBox("Opaque cell types (channels hidden)")
        self.opaque_check.setToolTip(
            "Draw every cell in its type's colour exactly as in the legend: the mask fully opaque and this "
            "image's channel layers hidden (untick to bring them back). Translucent over additive "
            "channels, a type's colour mixes with the channel colours under it.")
        self.opaque_check.toggled.connect(self.set_opaque_types)
        rl.addWidget(self.opaque_check)
        rl.addLayout(self._threshold_row())
        rl.addWidget(attribution_map)
        rl.addLayout(self._export_row())
        self.setEnabled(False)

    def _threshold_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        lab = QLabel("Outline cells (white) with p below")
        lab.setToolTip("Cells whose predicted type has a probability below this value are outlined in "
                       "the 'low confidence' layer")
        row.addWidget(lab, 1)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(0.5)
        self.threshold_spin.valueChanged.connect(self.update_low_confidence)
        row.addWidget(self.threshold_spin)
        return row

    def _export_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.csv_button = QPushButton("Export CSV…")
        self.csv_button.clicked.connect(self._export_csv_dialog)
        self.tiff_button = QPushButton("Export class mask…")
        self.tiff_button.clicked.connect(self._export_tiff_dialog)
        row.addWidget(self.csv_button)
        row.addWidget(self.tiff_button)
        return row

    # ------------------------------------------------------------------------------------- painting
    def paint(self, ann: Annotation, mask_layer) -> None:
        """Colour the mask, fill its features, add the derived layers, the legend and the status."""
        self._paint_layers(ann, mask_layer)
        self.update_low_confidence()
        self._fill_legend(ann)
        if self.opaque_check.isChecked():
            self.set_opaque_types(True)
        self._fill_status(ann)
        self.setEnabled(True)

    def _paint_layers(self, ann: Annotation, mask_layer) -> None:
        viewer, t = self.owner.viewer, ann.table
        objects, types = t["Object"].to_numpy(), t["cell_type"].to_numpy(dtype=object)
        mask = np.asarray(mask_layer.data)
        metadata = dict(mask_layer.metadata)
        metadata["s2s"] = {**meta(mask_layer), "role": "mask", "image": ann.image, "annotated": True}
        mask_layer.metadata = metadata
        mask_layer.colormap = _layers.cell_type_colormap(objects, types, ann.type_labels)
        mask_layer.features = _layers.mask_features(t, ann.type_labels)
        mask_layer.opacity = max(mask_layer.opacity, 0.6)
        cls_layer = put_labels(viewer, "class_ids", ann.image, ann.class_id_mask(mask), f"{ann.image} class id",
                               mask_layer, visible=False)
        cls_layer.colormap = _layers.class_id_colormap(ann.type_labels)
        cls_layer.features = pd.DataFrame({"index": np.arange(1, len(ann.type_labels) + 1),
                                           "cell_type": ann.type_labels})
        conf = paint_labels(mask, objects, t["cell_type_probability"].to_numpy(np.float32), np.nan, np.float32)
        lay = find_layer(viewer, "confidence", ann.image)
        if lay is None:
            viewer.add_image(conf, name=f"{ann.image} confidence", colormap="viridis", contrast_limits=(0, 1),
                             scale=mask_layer.scale, translate=mask_layer.translate, visible=False,
                             metadata=_layers.s2s_meta("confidence", ann.image), blending="translucent")
        else:
            lay.data = conf
        low = put_labels(viewer, "low_confidence", ann.image, mask, f"{ann.image} low confidence", mask_layer)
        low.contour = 1

    def _fill_legend(self, ann: Annotation) -> None:
        rows = _layers.counts_per_type(ann.table["cell_type"].to_numpy(dtype=object), ann.type_labels)
        total = max(1, sum(r[1] for r in rows))
        rows = sorted([r for r in rows if r[1] > 0], key=lambda r: -r[1])
        self.legend.setRowCount(len(rows))
        for i, (lab, cnt, color) in enumerate(rows):
            item = QTableWidgetItem(swatch(color), lab)
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

    def legend_rows(self) -> list[tuple[str, int]]:
        return [(self.legend.item(i, 0).text(), int(self.legend.item(i, 1).text()))
                for i in range(self.legend.rowCount())]

    def set_opaque_types(self, flag: bool = True) -> None:
        """Cell types exactly in their legend colours (mask opaque, the image's channels hidden), or
        back to the translucent mask over the channels as they were."""
        owner = self.owner
        ml = owner.mask_layer
        if self.opaque_check.isChecked() != bool(flag):
            self.opaque_check.setChecked(bool(flag))  # emits toggled -> here again
            return
        if ml is None or owner.annotation is None:
            return
        channels = [lay for lay in owner.run_channels if lay in owner.viewer.layers]
        if flag:
            if not self._opaque_on:  # a second run while opaque keeps the first state
                self._shown_before = {id(lay): lay.visible for lay in channels}
            self._opaque_on = True
            for lay in channels:
                lay.visible = False
            ml.opacity = 1.0
            ml.blending = "translucent"
        else:
            for lay in channels:
                lay.visible = self._shown_before.get(id(lay), lay.visible)
            self._opaque_on = False
            ml.opacity = 0.6
        ml.visible = True

    def _fill_status(self, ann: Annotation) -> None:
        s = ann.image_status or {}
        self.clinical_bars.set_rows([])
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
        self.clinical_bars.set_rows([(lab, float(s.get("p_status_" + str(lab).replace(" ", "_"), np.nan)), colors[lab])
                                     for lab in ann.status_labels])

    def update_low_confidence(self, *_) -> None:
        ann = self.owner.annotation
        if ann is None:
            return
        lay = find_layer(self.owner.viewer, "low_confidence", ann.image)
        if lay is None:
            return
        thr = float(self.threshold_spin.value())
        p = ann.table["cell_type_probability"].to_numpy(float)
        lay.colormap = _layers.low_confidence_colormap(ann.table["Object"].to_numpy(), p, thr)
        lay.name = f"{ann.image} low confidence (p < {thr:.2f})"
        n = int(np.sum(~(p >= thr)))
        self.threshold_spin.setToolTip(f"{n} cells below {thr:.2f}, outlined in white")

    # ------------------------------------------------------------------------------------ export
    def _annotation(self) -> Annotation:
        if self.owner.annotation is None:
            raise S2SInputError(None, "nothing to export: run the annotation first")
        return self.owner.annotation

    def export_csv(self, path) -> Path:
        return write_csv_atomic(self._annotation().table, path)

    def export_class_mask(self, path) -> Path:
        """The class-ID mask as a TIFF at ``path`` and its class names in ``<name>_classes.csv`` beside it."""
        ann = self._annotation()
        out = write_tiff_atomic(path, ann.class_id_mask(np.asarray(self.owner.mask_layer.data)))
        write_csv_atomic(pd.DataFrame({"class_id": np.arange(1, len(ann.type_labels) + 1),
                                       "cell_type": ann.type_labels}),
                         Path(path).with_name(Path(path).name.split(".")[0] + "_classes.csv"))
        return out

    def _export_dialog(self, title: str, suffix: str, filters: str, export, done: str) -> None:
        ann = self.owner.annotation
        if ann is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, title, f"{ann.image}{suffix}", filters)
        if path:
            try:
                export(path)
                self.owner.notify("info", f"Wrote {path}{done}")
            except (S2SInputError, OSError) as err:
                self.owner.notify("error", one_line(err) if isinstance(err, S2SInputError)
                                  else f"{path}: {err.strerror}")

    def _export_csv_dialog(self) -> None:
        self._export_dialog("Per-cell predictions", "_cells.csv", "CSV (*.csv)", self.export_csv, "")

    def _export_tiff_dialog(self) -> None:
        self._export_dialog("Class-id mask", "_classes.tiff", "TIFF (*.tiff *.tif)", self.export_class_mask,
                            " (class ids listed in *_classes.csv)")
