"""The batch widget (napari_s2s._batch_widget): folders in, live table, progress, cancel, resume.

Run headlessly: QT_API=pyqt6 xvfb-run -a python -m pytest tests/test_batch_widget.py
Input: the 3 real Damond toy images (steinbock layout) plus one corrupt image; the model is a tiny
untrained one (predictions meaningless, code path real).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from conftest import DAMOND_TOY as TOY  # noqa: E402


@pytest.fixture
def toy_folder(tmp_path):
    """The toy steinbock folder plus img/BAD.tiff (garbage bytes) with a valid mask."""
    src = tmp_path / "in"
    shutil.copytree(TOY, src, ignore=shutil.ignore_patterns("*.md", "*.csv"))
    shutil.copy(TOY / "panel.csv", src / "panel.csv")
    (src / "img" / "BAD.tiff").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    shutil.copy(src / "masks" / "E34.tiff", src / "masks" / "BAD.tiff")
    return src


@pytest.fixture
def notes(monkeypatch):
    seen = []
    import napari_s2s._batch_widget as w

    monkeypatch.setattr(w, "_notify", lambda kind, msg: seen.append((kind, msg)))
    return seen


@pytest.fixture
def widget(make_napari_viewer, tiny_model, notes):
    from napari_s2s._batch_widget import BatchAnnotateWidget

    viewer = make_napari_viewer()
    w = BatchAnnotateWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model_edit.setText(str(tiny_model))
    w.device_combo.setCurrentText("CPU")
    return w


def run_and_wait(qtbot, widget, timeout=120_000):
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)
    return worker


def test_batch_widget_runs_a_folder_and_lists_every_image(qtbot, widget, toy_folder, tmp_path, notes):
    out = tmp_path / "out"
    widget.input_edit.setText(str(toy_folder))
    widget.output_edit.setText(str(out))
    run_and_wait(qtbot, widget)
    rows = {r[0]: r for r in widget.table_rows()}
    assert sorted(rows) == ["BAD", "E34", "G01", "J02"]
    summary = pd.read_csv(out / "summary.csv").set_index("image")
    for name in ("E34", "G01", "J02"):
        assert rows[name][1] == str(summary.loc[name, "cells"])
        assert rows[name][2].startswith(summary.loc[name, "status"])
        assert rows[name][3] == ""
    assert rows["BAD"][1] == "" and "BAD.tiff: not a readable TIFF" in rows["BAD"][3]
    assert widget.result is not None and not widget.result.ok
    assert "3 annotated, 0 already done, 1 failed of 4 images" in widget.status_label.text()
    bar = widget.controls.progress_bar  # counted every image, failed ones too
    assert bar.maximum() == bar.value() == 4 and not bar.isVisible()
    assert notes and notes[-1][0] == "warning"
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    # the overlay of a finished image opens as an RGB layer; a failed one only warns
    layer = widget.open_overlay("E34")
    assert layer is not None and layer.rgb and layer.data.shape[2] == 3
    assert widget.open_overlay("BAD") is None and "No overlay for BAD" in notes[-1][1]

    # Run again: everything done is skipped (and shown), the bad image is retried
    run_and_wait(qtbot, widget)
    assert "0 annotated, 3 already done, 1 failed" in widget.status_label.text()
    assert len(widget.table_rows()) == 4


def test_batch_widget_cancel_keeps_finished_images_and_resumes(qtbot, widget, toy_folder, tmp_path):
    out = tmp_path / "out"
    widget.input_edit.setText(str(toy_folder))
    widget.output_edit.setText(str(out))
    widget.run()
    qtbot.waitUntil(lambda: len(widget.table_rows()) >= 1, timeout=120_000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    done_first = len(list((out / "done").glob("*.json")))
    assert 1 <= done_first <= 3
    if done_first < 3:
        assert widget.status_label.text().startswith("Cancelled")
    assert (out / "summary.csv").exists() and len(pd.read_csv(out / "summary.csv")) == done_first
    run_and_wait(qtbot, widget)
    assert f"{3 - done_first} annotated, {done_first} already done, 1 failed" in widget.status_label.text()


def test_batch_widget_reports_a_missing_folder(qtbot, widget, tmp_path, notes):
    widget.input_edit.setText(str(tmp_path / "nope"))
    widget.output_edit.setText(str(tmp_path / "out"))
    run_and_wait(qtbot, widget)
    assert "input folder not found" in widget.status_label.text()
    assert notes[-1][0] == "error" and "input folder not found" in notes[-1][1]
    widget.input_edit.setText("")
    assert widget.run() is None and notes[-1] == ("error", "Choose an input folder and an output folder")
    assert np.all([widget.run_button.isEnabled(), not widget.cancel_button.isEnabled()])
