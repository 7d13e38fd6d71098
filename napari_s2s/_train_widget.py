"""The "Train model" widget: train Spatial2Sentence on the user's own panel and cell types, in napari.

Labels come from one Points layer per class (the layer's name is the class; a point inside a cell of
the mask labels that cell; "Add class" makes such a layer, ready for clicking) or from a column of the
mask layer's ``features`` (e.g. a steinbock / cytomapper export loaded as features). The panel is the
image's channels. Training runs in a worker with a progress bar, the live validation accuracy (a
spatial block of each image held out) and Cancel; it writes a model folder with its card. "Suggest
cells" then adds a Points layer at the least confident cells, spread over the classes, for the next
round of labelling.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from napari.layers import Points
from qtpy.QtWidgets import (
    QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from spatial2sentence.errors import S2SInputError
from spatial2sentence.io import check_output_path
from spatial2sentence.measure import measure_cells
from spatial2sentence.settings import TrainSettings

from ._bridge import run_in_thread
from ._controls import RunControls, fit_width, notify, one_line, scroll_body
from ._inputs import LayerInputs, meta

POINTS_ROLE = "training-class"  # metadata role of a class's Points layer
FROM_POINTS = "Points layers (one per class)"


class TrainingCancelled(Exception):
    """Raised inside the training thread when the user cancels."""


def labels_from_points(points_layers, mask: np.ndarray) -> dict[int, str]:
    """{cell id: class} from Points layers named by class: each point labels the mask cell under it
    (points on background are ignored; a cell clicked for two classes keeps the last)."""
    out: dict[int, str] = {}
    for layer in points_layers:
        pts = np.round(np.asarray(layer.data)[:, -2:]).astype(int) if len(layer.data) else np.zeros((0, 2), int)
        inside = (pts[:, 0] >= 0) & (pts[:, 0] < mask.shape[0]) & (pts[:, 1] >= 0) & (pts[:, 1] < mask.shape[1])
        for y, x in pts[inside]:
            cid = int(mask[y, x])
            if cid:
                out[cid] = layer.name
    return out


def training_table(cells: pd.DataFrame, labels: dict, image: str) -> pd.DataFrame:
    """The measured cells with ``cell_type`` where labelled (the others stay as unlabelled partners)."""
    table = cells.copy()
    table.insert(0, "image", image)
    table["cell_type"] = table["Object"].map(lambda o: labels.get(int(o))).astype(object)
    return table


def train_steps(data, channels, mask, labels: dict, image: str, out: str, steps: int, pixel_size_um: float,
                cancel: threading.Event):
    """Generator run by the worker: measure, train (in a helper thread, :func:`._bridge.run_in_thread`),
    yield progress; returns (model, training table), or None when cancelled. Yields ``("stage", text)``,
    ``("step", done, total, validation_accuracy_or_None)`` and ``None`` while it waits."""
    from spatial2sentence.training import observe_steps, train  # lazy: torch, 7 s; opening the widget must not wait

    yield ("stage", "measuring cells")
    cells = measure_cells(np.asarray(data), np.asarray(mask), channels=channels, pixel_size_um=pixel_size_um)
    table = training_table(cells, labels, image)
    # evaluations are where progress is shown and a cancel is seen: every 10-25 steps, on 300 prompts
    eval_every = max(10, min(25, steps // 20))
    ts = TrainSettings(steps=steps, batch_size=32, eval_every=eval_every, eval_prompts=300,
                       checkpoint_every=10 ** 9, val_split="blocks", num_threads=1, patience=8)

    def work(emit):
        def observer(step, model):
            emit(("step", step, steps, None))
            if cancel.is_set():
                raise TrainingCancelled()

        def log(msg):
            m = re.search(r"step (\d+):.*type_acc=([0-9.]+)", str(msg))
            if m:
                emit(("step", int(m.group(1)), steps, float(m.group(2))))

        with observe_steps(observer):
            return train(table, out, train_settings=ts, progress_bar=False, log=log,
                         info={"name": f"trained in napari on {image}",
                               "description": f"{len(labels)} labelled cells of {image}"}).model

    yield ("stage", f"training on {len(labels)} labelled cells ({len(table)} cells as context)")
    try:
        model = yield from run_in_thread(work, cancel, name="s2s-train")
    except TrainingCancelled:
        return None
    return model, table


def suggest_cells(model, table: pd.DataFrame, markers: list[str], n: int = 12) -> pd.DataFrame:
    """The ``n`` unlabelled cells the model is least sure of, taken in turn from each predicted class."""
    pred = model.predict_cells(table.drop(columns=["cell_type"]), markers=markers, tasks=("type",),
                               allow_partial_panel=True).cells
    pred = pred.assign(x=table["x"].to_numpy(), y=table["y"].to_numpy(), labelled=table["cell_type"].notna().to_numpy())
    pool = pred[~pred["labelled"] & pred["cell_type_probability"].notna()]
    by_class = [g.sort_values("cell_type_probability").index.tolist() for _, g in pool.groupby("cell_type")]
    picked = []
    while len(picked) < n and any(by_class):
        for lst in by_class:
            if lst and len(picked) < n:
                picked.append(lst.pop(0))
    return pool.loc[picked]


class TrainModelWidget(LayerInputs, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._groups: dict[str, list] = {}
        self.worker = None
        self._cancel: threading.Event | None = None
        self.model = None
        self.table = None
        self.history: list[tuple[int, float]] = []
        self._build_ui()
        for name in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, name).connect(self._refresh_layers)
        self._refresh_layers()

    def _build_ui(self):
        root = scroll_body(self)
        inputs = QGroupBox("Image")
        self.layer_rows(QFormLayout(inputs), "One marker name per channel, in channel order: the model's panel")
        root.addWidget(inputs)

        lab = QGroupBox("Labels")
        ll = QVBoxLayout(lab)
        self.source_combo = QComboBox()
        self.source_combo.setToolTip("Where the cell types come from")
        self.source_combo.currentIndexChanged.connect(self.refresh_counts)
        ll.addWidget(self.source_combo)
        row = QHBoxLayout()
        self.class_edit = QLineEdit()
        self.class_edit.setPlaceholderText("class name, e.g. beta")
        add = QPushButton("Add class")
        add.setToolTip("Adds a Points layer named by the class: click cells of that class on the canvas")
        add.clicked.connect(self.add_class)
        row.addWidget(self.class_edit)
        row.addWidget(add)
        ll.addLayout(row)
        self.counts = QTableWidget(0, 2)
        self.counts.setHorizontalHeaderLabels(["class", "labelled cells"])
        self.counts.verticalHeader().setVisible(False)
        self.counts.setMinimumHeight(110)  # header + 3 classes visible
        self.counts.setMaximumHeight(170)
        self.counts.horizontalHeader().setStretchLastSection(True)
        ll.addWidget(self.counts)
        root.addWidget(lab)

        opts = QGroupBox("Training")
        of = QFormLayout(opts)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(20, 20000)
        self.steps_spin.setValue(600)
        self.steps_spin.setToolTip("At most this many steps (batches of 32 prompts); training stops early when "
                                   "the validation accuracy no longer improves")
        self.out_edit = QLineEdit(str(Path.home() / "napari-s2s-models" / "my_model"))
        of.addRow("Steps", self.steps_spin)
        of.addRow("Model folder", self.out_edit)
        root.addWidget(opts)

        self.controls = RunControls(root, self.run, self.cancel)
        self.controls.run_button.setText("Train")
        self.curve_label = QLabel("")
        self.curve_label.setWordWrap(True)
        root.addWidget(self.curve_label)
        self.suggest_button = QPushButton("Suggest cells to label next")
        self.suggest_button.setEnabled(False)
        self.suggest_button.setToolTip("Adds a Points layer at the unlabelled cells the model is least sure of")
        self.suggest_button.clicked.connect(self.suggest)
        root.addWidget(self.suggest_button)
        root.addStretch(1)
        fit_width(self, 340)

    # ------------------------------------------------------------------------------------- labels
    def _refresh_layers(self, event=None):
        super()._refresh_layers(event)
        current = self.source_combo.currentText()
        self.source_combo.blockSignals(True)
        self.source_combo.clear()
        self.source_combo.addItem(FROM_POINTS)
        mask = self._mask_layer()
        if mask is not None and getattr(mask, "features", None) is not None:
            for col in mask.features.columns:
                if col not in ("index", "Object", "label") and not pd.api.types.is_float_dtype(mask.features[col]):
                    self.source_combo.addItem(f"mask feature: {col}")
        if current and self.source_combo.findText(current) >= 0:
            self.source_combo.setCurrentText(current)
        self.source_combo.blockSignals(False)
        self.refresh_counts()

    def _mask_layer(self):
        return next((m for m in self.mask_layers() if m.name == self.mask_combo.currentText()), None)

    def class_layers(self) -> list:
        return [lay for lay in self.viewer.layers if isinstance(lay, Points) and meta(lay).get("role") == POINTS_ROLE]

    def add_class(self, name: str | None = None):
        name = (name if isinstance(name, str) else self.class_edit.text()).strip()
        if not name:
            notify("warning", "Type a class name first")
            return None
        if any(lay.name == name for lay in self.class_layers()):
            notify("warning", f"There is already a class {name!r}")
            return None
        colors = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]
        color = colors[len(self.class_layers()) % len(colors)]
        layer = self.viewer.add_points(np.zeros((0, 2)), name=name, size=3, face_color=color,
                                       metadata={"s2s": {"role": POINTS_ROLE}})
        layer.mode = "add"
        layer.events.data.connect(self.refresh_counts)
        self.class_edit.clear()
        self.refresh_counts()
        return layer

    def labels(self) -> dict[int, str]:
        mask = self._mask_layer()
        if mask is None:
            return {}
        src = self.source_combo.currentText()
        if src.startswith("mask feature: "):
            col = src[len("mask feature: "):]
            f = mask.features
            ids = f["Object"] if "Object" in f.columns else f.get("index", pd.Series(np.arange(1, len(f) + 1)))
            vals = f[col]
            return {int(i): str(v) for i, v in zip(ids, vals) if pd.notna(v) and str(v).strip() not in ("", "nan")}
        return labels_from_points(self.class_layers(), np.asarray(mask.data))

    def refresh_counts(self, *_):
        counts = pd.Series(list(self.labels().values()), dtype=object).value_counts()
        self.counts.setRowCount(len(counts))
        for r, (k, v) in enumerate(counts.items()):
            self.counts.setItem(r, 0, QTableWidgetItem(str(k)))
            self.counts.setItem(r, 1, QTableWidgetItem(str(int(v))))

    # ------------------------------------------------------------------------------------- training
    def run(self):
        if self.worker is not None:
            notify("warning", "Training is already running; cancel it first")
            return None
        try:
            image, data, markers, mask_layer, ps = self.current_inputs()
            labels = self.labels()
            counts = pd.Series(list(labels.values()), dtype=object).value_counts()
            if len(counts) < 2:
                raise S2SInputError(image, "label cells of at least 2 classes (Add class, then click cells)")
            if counts.min() < 3:
                raise S2SInputError(image, f"class {counts.idxmin()!r} has {counts.min()} labelled cell(s); "
                                           "label at least 3 per class")
            out = Path(self.out_edit.text().strip()).expanduser()
            check_output_path(out, folder=True)
        except S2SInputError as err:
            notify("error", one_line(err, "Training failed"))
            self.controls.status_label.setText(one_line(err, "Training failed"))
            return None
        self._cancel = threading.Event()
        self.history = []
        self._t0 = time.perf_counter()
        self._markers = markers
        self.worker = self.controls.launch(
            self, train_steps, data, markers, np.asarray(mask_layer.data), labels, image, str(out),
            self.steps_spin.value(), ps, self._cancel, status=f"Training on {len(labels)} labelled cells…")
        return self.worker

    def cancel(self):
        if self._cancel is not None:
            self._cancel.set()

    def _on_yielded(self, msg):
        if not msg:
            return
        if msg[0] == "stage":
            self.controls.status_label.setText(msg[1].capitalize() + "…")
        elif msg[0] == "step":
            _, done, total, acc = msg
            self.controls.progress(done, total)
            if acc is not None:
                self.history.append((done, acc))
                best = max(a for _, a in self.history)
                self.curve_label.setText(f"validation accuracy (held-out block): {acc:.2f} at step {done} "
                                         f"(best {best:.2f})")

    def _on_returned(self, res):
        if res is None:
            self.controls.status_label.setText("Training cancelled; nothing written")
            return
        self.model, self.table = res
        secs = time.perf_counter() - self._t0
        self.controls.status_label.setText(
            f"Model written to {self.out_edit.text().strip()} in {secs:.0f} s: choose this folder as the Model "
            "in Annotate cells")
        self.suggest_button.setEnabled(True)

    def _on_errored(self, err):
        self.controls.status_label.setText(one_line(err, "Training failed"))
        notify("error", one_line(err, "Training failed"))

    def _on_finished(self):
        self.worker = None
        self.controls.running(False)

    def suggest(self, n: int = 12):
        if self.model is None or self.table is None:
            return None
        picked = suggest_cells(self.model, self.table, self._markers, n)
        if not len(picked):
            notify("info", "Every cell is labelled")
            return None
        ps = float(self.current_inputs()[4])
        pts = picked[["y", "x"]].to_numpy() / ps
        layer = self.viewer.add_points(pts, name="label these next", size=7, face_color="transparent",
                                       border_color="#ffffff", text={"string": [f"{t}?" for t in picked["cell_type"]],
                                                                     "size": 8, "color": "white"})
        return layer
