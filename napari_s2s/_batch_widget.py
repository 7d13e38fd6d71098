"""The "Batch annotate folder" dock widget: ``s2s annotate`` from napari.

Pick an input folder (a steinbock folder, image + mask TIFFs, or ``.mcd`` files with ``masks/``; see
:mod:`spatial2sentence.batch`), an output folder, the model and the device, then Run. The run is
:func:`spatial2sentence.batch.run_batch` in a napari worker (:func:`batch_steps`) that yields one
message per finished image: the dock's own progress bar counts the images done, the status line names
the last one, and a live table lists every image (name, cells, predicted clinical status, error).
Cancel stops after the current image (finished images are kept and the run-level files are written);
Run again resumes. Double-click a finished row to open its type overlay in the viewer.
"""

from __future__ import annotations

import re
import threading
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox, QFormLayout, QGroupBox, QHeaderView, QLineEdit, QSpinBox, QTableWidget,
    QTableWidgetItem, QWidget,
)


from ._bridge import run_in_thread
from ._controls import DEVICES, RunControls, fit_width, folder_row, model_inputs, one_line, scroll_body
from ._controls import notify as _notify

COLUMNS = ["image", "cells", "status", "error"]

_one_line = partial(one_line, failure="Batch annotation failed")


def batch_steps(input_dir, out_dir, model=None, device="auto", workers=0, overwrite=False, cancel=None):
    """Generator for a napari worker: yields ``("start", total)`` then ``("image", record, done, total)``
    per finished image (and ``None`` while it waits); returns the
    :class:`~spatial2sentence.batch.BatchResult`.

    ``run_batch`` runs in a helper thread (:func:`._bridge.run_in_thread`); ``cancel`` (a
    ``threading.Event``) stops it after the current image: its progress callback then returns False.
    """
    # the batch runner (and torch, seconds) is imported in the worker's thread, not on napari's GUI
    # thread as the widget opens
    from spatial2sentence.batch import run_batch

    cancel = cancel or threading.Event()

    def work(emit):
        def progress(rec, done, total):
            emit(("start", total) if rec is None else ("image", rec, done, total))
            return not cancel.is_set()

        return run_batch(input_dir, out_dir, model=model, device=device, workers=workers, overwrite=overwrite,
                         progress=progress)

    return (yield from run_in_thread(work, cancel, name="s2s-batch"))


class BatchAnnotateWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.result = None
        self._cancel: threading.Event | None = None
        self._rows: dict[str, int] = {}
        self._records: dict[str, dict] = {}
        self._build_ui()

    # ------------------------------------------------------------------------------------- UI
    def _build_ui(self):
        root = scroll_body(self)
        box = QGroupBox("Folders and model")
        form = QFormLayout(box)
        self.input_edit = QLineEdit()
        self.input_edit.setPlaceholderText("steinbock folder, images + masks, or .mcd files")
        self.input_edit.setToolTip(
            "steinbock folder (img/, masks/, panel.csv); or TIFF images X.tiff with masks X_mask.tiff or "
            "masks/X.tiff; or .mcd files whose acquisition A of F.mcd has its mask at masks/F_AAA.tiff. "
            "A panel.csv in the folder names the channels.")
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("output folder (a rerun resumes in it)")
        self.model_edit, self.device_combo = model_inputs()
        self.workers_spin = QSpinBox()
        self.workers_spin.setRange(0, 64)
        self.workers_spin.setToolTip("0: annotate in napari's process; N: a local Dask cluster of N processes")
        self.overwrite_check = QCheckBox("redo images already done")
        form.addRow("Input", folder_row(self.input_edit, "Input folder"))
        form.addRow("Output", folder_row(self.output_edit, "Output folder"))
        form.addRow("Model", folder_row(self.model_edit, "spatial2sentence model folder"))
        form.addRow("Device", self.device_combo)
        form.addRow("Workers", self.workers_spin)
        form.addRow("", self.overwrite_check)
        root.addWidget(box)

        self.controls = RunControls(root, self.run, self.cancel)
        self.run_button = self.controls.run_button
        self.cancel_button = self.controls.cancel_button
        self.status_label = self.controls.status_label

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeToContents)
        hh.setSectionResizeMode(1, QHeaderView.ResizeToContents)
        hh.setSectionResizeMode(2, QHeaderView.ResizeToContents)
        hh.setSectionResizeMode(3, QHeaderView.Stretch)
        # an error is a sentence ("E34.tiff: mask shape (50, 60) differs from ..."): wrapped over as many
        # lines as it needs in the stretched last column, never cut to a few characters
        self.table.setWordWrap(True)
        self.table.setTextElideMode(Qt.ElideNone)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.setMinimumHeight(200)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_overlay(self.table.item(row, 0).text()))
        root.addWidget(self.table, 1)
        fit_width(self, 380)

    # ------------------------------------------------------------------------------------- run
    def run(self):
        """Start the batch worker; returns it (None when the folders are missing)."""
        if self.worker is not None:
            _notify("warning", "A batch run is already going; cancel it first")
            return None
        src, out = self.input_edit.text().strip(), self.output_edit.text().strip()
        if not src or not out:
            _notify("error", "Choose an input folder and an output folder")
            return None
        self._cancel = threading.Event()
        self.result = None
        self.table.setRowCount(0)
        self._rows.clear()
        self._records.clear()
        self.worker = self.controls.launch(
            self, batch_steps, src, out, model=self.model_edit.text().strip() or None,
            device=DEVICES[self.device_combo.currentText()], workers=self.workers_spin.value(),
            overwrite=self.overwrite_check.isChecked(), cancel=self._cancel, status=f"Reading {src}…")
        return self.worker

    def cancel(self):
        """Stop after the current image (finished images are kept; Run resumes)."""
        if self._cancel is not None:
            self._cancel.set()
        if self.worker is not None:
            self.status_label.setText("Cancelling after the current image…")

    def _on_yielded(self, msg):
        if not msg:
            return
        if msg[0] == "start":
            total = msg[1]
            self.controls.progress(0, total)
            self.status_label.setText(f"Annotating {total} images…")
            return
        _, rec, done, total = msg
        self.add_record(rec)
        self.controls.progress(done, total)
        if not (self._cancel is not None and self._cancel.is_set()):
            self.status_label.setText(f"{done} of {total} images: {rec['image']} {rec['state']}")

    def add_record(self, rec: dict) -> None:
        """Add or update the table row of one image."""
        name = rec["image"]
        self._records[name] = rec
        row = self._rows.get(name)
        if row is None:
            row = self.table.rowCount()
            self.table.insertRow(row)
            self._rows[name] = row
        status = ""
        if rec.get("status"):
            p = rec.get("status_probability")
            status = rec["status"] + (f" ({p:.2f})" if p is not None else "")
        error = f"{Path(rec['file']).name}: {rec['reason']}" if rec["state"] == "error" else ""
        # the table shows the problem; the details in parentheses (long marker lists) in the tooltip
        detail = re.match(r"^(.*?) \((.{40,})\)$", error, flags=re.S)
        error_shown = f"{detail.group(1)} (…)" if detail else error
        values = [name, "" if rec.get("cells") is None else str(rec["cells"]), status, error_shown]
        tip = {"skipped": "already done: outputs kept from an earlier run", "done": "annotated",
               "error": f"{rec.get('file')}: {rec.get('reason')}", "cancelled": "cancelled"}.get(rec["state"], "")
        for col, value in enumerate(values):
            item = QTableWidgetItem(value)
            item.setToolTip(tip)
            if col == 1:
                item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
            if rec["state"] == "error":
                item.setForeground(Qt.red)
            self.table.setItem(row, col, item)
        self.table.scrollToItem(self.table.item(row, 0))

    def table_rows(self) -> list[list[str]]:
        return [[self.table.item(r, c).text() for c in range(self.table.columnCount())]
                for r in range(self.table.rowCount())]

    def _on_returned(self, result):
        self.result = result
        im = result.run["images"]
        text = (f"{im['annotated']} annotated, {im['skipped_already_done']} already done, {im['failed']} failed "
                f"of {im['total']} images -> {result.out_dir}")
        if self._cancel is not None and self._cancel.is_set() and im["cancelled"]:
            text = f"Cancelled: {text}"
        self.status_label.setText(text)
        _notify("warning" if im["failed"] else "info", text)

    def _on_errored(self, err):
        self.status_label.setText(_one_line(err))
        _notify("error", _one_line(err))

    def _on_finished(self):
        self.worker = None
        self.controls.running(False)

    # ------------------------------------------------------------------------------------- results
    def open_overlay(self, name: str):
        """Add the type overlay PNG of a finished image to the viewer (RGB image layer)."""
        from spatial2sentence.batch import output_paths  # loaded by the run that made the overlay

        out = self.output_edit.text().strip()
        path = output_paths(out, name)["overlay"] if out else None
        if path is None or not path.is_file():
            _notify("warning", f"No overlay for {name} (the image failed or is not done)")
            return None
        with Image.open(path) as im:
            data = np.asarray(im.convert("RGB"))
        return self.viewer.add_image(data, rgb=True, name=f"{name} cell types")
