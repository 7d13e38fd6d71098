"""The attribution map of the Annotate cells dock: every cell coloured by how much one marker (or its
partners) drove its prediction (integrated gradients, :mod:`spatial2sentence.explain`).

The attributions of all cells are computed once per annotation, in a napari worker
(:func:`._annotate.explain_all_steps`): the cells in view first, in chunks painted as they finish, with
a progress bar (cells done / total), the time left and Cancel. Cancelled, the cells done stay and the
next Show computes only the others; once every cell is there, another marker repaints at once. The
attributions go into the dock widget's cache (``owner._attributions``, shared with the cell
explanations); the map reads the run's state from the widget (``annotation``, ``mask_layer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import time
from functools import partial

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from spatial2sentence.aliases import canonical_marker
from spatial2sentence.errors import first_line

from . import _layers
from ._annotate import distinctive_marker, explain_all_steps, order_from
from ._controls import eta_text, is_deleted
from ._explain import AttributionsUnavailable
from ._explanation import display_names
from ._results import put_labels

if TYPE_CHECKING:  # the core (torch) is not imported when napari builds the widget
    from spatial2sentence.annotate import Annotation

HOW = " (integrated gradients; the cells in view first)"


class AttributionMap(QWidget):
    """The "Attribution of [marker] Show" row, the progress row (hidden when idle) and a note."""

    def __init__(self, owner):
        super().__init__()
        self.owner = owner
        self.complete = False  # every cell of the annotation has its attribution
        self.worker = None  # the whole-image worker while it runs
        self._cancel = None
        self._painted_at = 0.0
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(self._marker_row())
        lay.addWidget(self._progress_row())
        self.eta = QLabel("")
        self.eta.setWordWrap(True)
        self.eta.setVisible(False)
        lay.addWidget(self.eta)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color:#c0c0c0;font-style:italic;")
        lay.addWidget(self.note)

    def _marker_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(QLabel("Attribution of"))
        self.combo = QComboBox()
        self.combo.setToolTip("Colour every cell by how much this marker (or its partners) drove its "
                              "prediction: red for, blue against")
        row.addWidget(self.combo, 1)
        self.button = QPushButton("Show")
        self.button.clicked.connect(lambda: self.show_attributions(self.combo.currentText()))
        self.combo.currentTextChanged.connect(
            lambda t: self.complete and self.owner.annotation is not None and self.paint(t))
        row.addWidget(self.button)
        return row

    def _progress_row(self) -> QWidget:
        """Cells done / total and Cancel, while the whole image is computed."""
        self.progress_box = QWidget()
        row = QHBoxLayout(self.progress_box)
        row.setContentsMargins(0, 0, 0, 0)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m cells")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop computing attributions; the cells done so far stay coloured "
                                      "and Show goes on with the others")
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        self.progress_box.setVisible(False)
        return self.progress_box

    # ------------------------------------------------------------------------------------- a new run
    def fill(self, ann: Annotation) -> None:
        """The markers of a new annotation in the box (the user's names, the model's in the tooltip),
        starting on the one that most sets the commonest type apart."""
        self.combo.clear()
        names = display_names(ann.markers)
        used = {canonical_marker(m) for m in (ann.used_markers or ann.markers)}
        markers = [m for m in ann.markers if canonical_marker(m) in used] or list(ann.markers)
        for m in markers:
            self.combo.addItem(m)
            canon = canonical_marker(m)
            if canon != m:
                self.combo.setItemData(self.combo.count() - 1, f"model's name: {canon}", Qt.ToolTipRole)
        self.combo.addItem("partners")
        best = distinctive_marker(ann.cells, ann.table, markers)
        if best is not None:
            self.combo.setCurrentText(names.get(canonical_marker(best), best))
        self.note.setText("")

    def reset(self) -> None:
        """A new annotation: the previous one's attributions stopped and no longer shown."""
        if self.worker is not None:
            self.cancel()
            self.worker = None
            self._idle()
        self.complete = False

    # ------------------------------------------------------------------------------------- computing
    def show_attributions(self, what: str):
        """Colour every cell by how much ``what`` (a marker or ``"partners"``) drove its prediction.

        Starts the worker of the whole image when some cells have no attribution yet (returns it, so
        callers can wait on it; a second call while it runs returns the same worker); once all are
        there, repaints at once (returns the layer)."""
        ann = self.owner.annotation
        if ann is None or not what:
            return None
        if what != "partners":  # the user's name of the marker, whichever name was asked for
            what = display_names(ann.markers).get(canonical_marker(what), what)
        if self.combo.findText(what) >= 0 and self.combo.currentText() != what:
            self.combo.blockSignals(True)
            self.combo.setCurrentText(what)
            self.combo.blockSignals(False)
        if self.complete:
            return self.paint(what)
        if self.worker is not None:  # already computing every cell
            return self.worker
        done = self.owner._attributions
        todo = [o for o in self._cells_in_view_first(ann.table["Object"].tolist()) if str(o) not in done]
        if not todo:
            self.complete = True
            return self.paint(what)
        return self._start(ann, todo, what)

    def _start(self, ann: Annotation, todo: list, what: str):
        owner = self.owner
        cancel = self._cancel = owner.new_job()
        worker = create_worker(explain_all_steps, ann.model, owner.prepared_cells(), todo, markers=ann.markers,
                               cancel=cancel, _ignore_errors=True, _start_thread=False)
        total = len(todo)
        self._painted_at = 0.0
        worker.yielded.connect(partial(self._step, ann, total, time.perf_counter(), what))
        worker.returned.connect(partial(self._done, ann, what))
        worker.errored.connect(partial(self._failed, ann))
        worker.finished.connect(partial(self._finished, worker, cancel))
        owner.attribution_worker = self.worker = worker
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.progress_box.setVisible(True)
        self.eta.setText(f"0 / {total} cells{HOW}")
        self.eta.setVisible(True)
        self.button.setEnabled(False)
        self.note.setText("")
        # the progress in view, not below the fold (once the layout has made room for it)
        QTimer.singleShot(100, lambda: is_deleted(self.eta) or owner.scroll_area.ensureWidgetVisible(self.eta))
        worker.start()
        return worker

    def _alive(self, ann: Annotation) -> bool:
        """The widgets still exist and ``ann`` is still the annotation shown."""
        return not is_deleted(self.note) and self.owner.annotation is ann

    def _step(self, ann: Annotation, total: int, t0: float, what: str, msg) -> None:
        if not msg or not self._alive(ann):
            return
        if msg[0] == "progress":
            done = int(msg[1])
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
            self.eta.setText(eta_text(done, total, time.perf_counter() - t0) + HOW)
        elif msg[0] == "partial":
            self.owner._attributions.update(msg[1])
            now = time.perf_counter()
            if now - self._painted_at > 1.0:  # repaint what is done, at most once a second
                self._painted_at = now
                self.paint(self.combo.currentText() or what, partial=True)

    def _done(self, ann: Annotation, what: str, res) -> None:
        if not self._alive(ann):
            return
        attributions = self.owner._attributions
        attributions.update(res or {})
        self.complete = all(str(o) in attributions for o in ann.table["Object"])
        self.paint(self.combo.currentText() or what, partial=not self.complete)

    def _failed(self, ann: Annotation, err) -> None:
        if not self._alive(ann):
            return
        # the explainer's own failures already say "attributions failed: ..."
        message = str(err) if isinstance(err, AttributionsUnavailable) else f"attributions failed: {first_line(err)}"
        self.note.setText(message)
        self.owner.notify("error", message)

    def _finished(self, worker, cancel) -> None:
        self.owner.end_job(cancel)
        if is_deleted(self.note):
            return
        if self.worker is worker:
            self.worker = None
        if self.owner.attribution_worker is worker:
            self.owner.attribution_worker = None
        self._idle()

    def _idle(self) -> None:
        self.progress_box.setVisible(False)
        self.eta.setVisible(False)
        self.button.setEnabled(True)

    def cancel(self) -> None:
        """Stop the whole-image attributions; the cells done so far stay coloured."""
        if self._cancel is not None:
            self._cancel.set()
        if self.worker is not None:
            self.eta.setText("Cancelling…")

    def _cells_in_view_first(self, objects) -> list:
        """The annotation's cells, nearest first to the middle of the canvas (so the part of the image
        the user looks at is coloured first)."""
        owner = self.owner
        ann, ml = owner.annotation, owner.mask_layer
        t = ann.table.set_index(ann.table["Object"].astype(str))
        xy = t.loc[[str(o) for o in objects], ["x", "y"]].to_numpy(float)
        scene = getattr(owner.viewer, "scene", None)  # napari >= 0.9: viewer.scene.camera
        camera = scene.camera if scene is not None else owner.viewer.camera
        centre = np.asarray(camera.center, dtype=float)[-2:]  # world (y, x)
        translate = np.asarray(ml.translate, dtype=float)[-2:]
        y, x = centre - translate  # world units are um (layers are scaled by the pixel size)
        return order_from(list(objects), xy, (x, y))

    # ------------------------------------------------------------------------------------- painting
    def paint(self, what: str, partial: bool = False):
        """The attribution layer of ``what`` (cells without an attribution yet left clear when
        ``partial``); returns the layer."""
        owner = self.owner
        ann, attrs = owner.annotation, owner._attributions
        objects = ann.table["Object"].to_numpy()
        scores = np.array([_layers.score_of(attrs[str(o)], what) if str(o) in attrs else np.nan
                           for o in objects], dtype=float)
        cmap, vmax = _layers.attribution_colormap(objects, scores)
        n_done = sum(str(o) in attrs for o in objects)
        if partial:  # cells not computed yet: left clear (grey means "not in the cell's prompt")
            cdict = dict(cmap.color_dict)
            cdict.update({int(o): _layers.TRANSPARENT for o in objects if str(o) not in attrs})
            cmap = _layers.direct_colormap(cdict)
        lay = put_labels(owner.viewer, "attribution", ann.image, np.asarray(owner.mask_layer.data),
                         f"{ann.image} attribution", owner.mask_layer)
        lay.colormap = cmap
        lay.opacity = 0.9
        lay.name = f"{ann.image} attribution: {what}"
        lay.metadata = _layers.s2s_meta("attribution", ann.image, what=what, vmax=vmax)
        self.note.setText(f"Cells coloured by the attribution of {what} to their predicted type: "
                          f"red = drove it, blue = against it, white = no effect, grey = not in the cell's prompt "
                          f"(max |score| {vmax:.2g})"
                          + (f"; {n_done} of {len(objects)} cells so far, the others left clear"
                             if partial else ""))
        owner.viewer.layers.selection.active = owner.mask_layer
        return lay
