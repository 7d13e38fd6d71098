"""The Train model widget, as a user meets it: opened from the Plugins menu path, cells of 3 classes
marked with Points layers on a real Damond crop, trained, then used by Annotate cells."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from napari_s2s._train_widget import labels_from_points

from conftest import DAMOND_TOY as TOY  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _shot(viewer, tmp_path, name):
    path = (DOCS if os.environ.get("S2S_DOCS_SCREENSHOTS") else tmp_path) / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    assert path.stat().st_size > 10_000
    return path


def _inside(mask, cid):
    """A pixel of cell ``cid`` (its most central one), as a user's click would land."""
    yx = np.argwhere(mask == cid)
    return yx[np.argmin(((yx - yx.mean(0)) ** 2).sum(1))]


def test_labels_from_points_reads_the_cell_under_each_point():
    class P:  # a stand-in Points layer
        def __init__(self, name, data):
            self.name, self.data = name, np.asarray(data, float)

    mask = np.zeros((10, 10), np.uint16)
    mask[1:4, 1:4] = 5
    mask[6:9, 6:9] = 9
    got = labels_from_points([P("a", [[2, 2], [0, 9]]), P("b", [[7.2, 6.8], [50, 50]])], mask)
    assert got == {5: "a", 9: "b"}  # background and out-of-image points ignored


def test_train_in_napari_then_annotate(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import napari_s2s._train_widget as tw
    import napari_s2s._widget as aw

    notes = []
    monkeypatch.setattr(tw, "notify", lambda kind, msg: notes.append((kind, msg)))
    monkeypatch.setattr(aw, "_notify", lambda kind, msg: notes.append((kind, msg)))
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-s2s", "damond_g01")
    _, widget = viewer.window.add_plugin_dock_widget("napari-s2s", "Train model")
    mask_layer = next(lay for lay in viewer.layers if lay.__class__.__name__ == "Labels")
    mask = np.asarray(mask_layer.data)
    truth = pd.read_csv(TOY / "labels.csv").query("image == 'G01'").set_index("Object")["cell_type"]
    assert widget.run() is None and "at least 2 classes" in notes[-1][1]  # nothing labelled yet
    _shot(viewer, tmp_path, "train_before.png")

    # a user clicks half of the cells of each class (the other half is for checking)
    rng = np.random.default_rng(0)
    labelled = set()
    for cls in ("beta", "alpha", "other"):
        layer = widget.add_class(cls)
        ids = truth[truth == cls].index.to_numpy()
        chosen = rng.choice(ids, size=max(3, len(ids) // 2), replace=False)
        layer.data = np.array([_inside(mask, c) for c in chosen], float)
        labelled |= set(int(c) for c in chosen)
    assert widget.labels() == {int(c): truth[c] for c in labelled}
    assert widget.counts.rowCount() == 3

    widget.steps_spin.setValue(300)
    widget.out_edit.setText(str(tmp_path / "my_model"))
    worker = widget.run()
    assert worker is not None, notes
    qtbot.waitUntil(lambda: len(widget.history) >= 2 or widget.worker is None, timeout=300_000)
    _shot(viewer, tmp_path, "train_during.png")
    qtbot.waitUntil(lambda: widget.worker is None, timeout=600_000)
    assert widget.model is not None, (notes, widget.controls.status_label.text())
    assert (tmp_path / "my_model" / "s2s_config.json").exists() and "Model written" in widget.controls.status_label.text()
    assert widget.history and all(0 <= a <= 1 for _, a in widget.history)

    # the next round: suggestions fall on unlabelled cells
    sugg = widget.suggest()
    assert sugg is not None and 1 <= len(sugg.data) <= 12
    for y, x in np.round(sugg.data).astype(int):
        assert int(mask[y, x]) not in labelled
    _shot(viewer, tmp_path, "train_after.png")

    # Annotate cells uses the new model; judged on the cells nobody clicked
    _, annot = viewer.window.add_plugin_dock_widget("napari-s2s", "Annotate cells")
    annot.model_edit.setText(str(tmp_path / "my_model"))
    annot.device_combo.setCurrentText("CPU")
    assert annot.run() is not None, notes
    qtbot.waitUntil(lambda: annot.worker is None, timeout=300_000)
    table = annot.annotation.table.set_index("Object")
    test = [o for o in truth.index if o not in labelled]
    acc = float(np.mean(table.loc[test, "cell_type"].to_numpy() == truth.loc[test].to_numpy()))
    majority = float(truth.loc[test].value_counts(normalize=True).iloc[0])
    assert set(table["cell_type"].dropna()) <= {"beta", "alpha", "other", "unknown"}
    assert acc > majority + 0.1, (acc, majority)


def test_cancel_writes_nothing(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import napari_s2s._train_widget as tw

    monkeypatch.setattr(tw, "notify", lambda kind, msg: None)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-s2s", "damond_e34")
    _, widget = viewer.window.add_plugin_dock_widget("napari-s2s", "Train model")
    mask = np.asarray(next(lay for lay in viewer.layers if lay.__class__.__name__ == "Labels").data)
    ids = [i for i in np.unique(mask) if i][:12]
    for k, cls in enumerate(("a", "b")):
        widget.add_class(cls).data = np.array([_inside(mask, c) for c in ids[k::2]], float)
    widget.steps_spin.setValue(20000)
    widget.out_edit.setText(str(tmp_path / "m"))
    assert widget.run() is not None
    qtbot.waitUntil(lambda: len(widget.history) >= 1 or widget.worker is None, timeout=300_000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=300_000)
    assert widget.model is None and "cancelled" in widget.controls.status_label.text()
