"""The plugin as a user meets it: widgets opened from napari's Plugins menu.

napari's Plugins menu calls ``viewer.window.add_plugin_dock_widget("napari-s2s", name)``; the widget then
receives a ``PublicOnlyProxy`` of the viewer, not the viewer itself. These tests take that path (never a
widget built by hand) and check the layout a user sees: the explanation is a tab beside Annotate cells,
no widget overlaps another, and the main window fits a 1600 x 1000 screen.

Run headlessly: QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1200x24" python -m pytest tests/test_plugin_menu.py
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

SCREEN_W, SCREEN_H = 1600, 1000


# ------------------------------------------------------------------------------------------ geometry

def _in_layout(layout, widget) -> bool:
    if layout is None:
        return False
    if layout.indexOf(widget) >= 0:
        return True
    for i in range(layout.count()):
        sub = layout.itemAt(i).layout()
        if sub is not None and _in_layout(sub, widget):
            return True
    return False


def overlapping_widgets(root) -> list[str]:
    """Every pair of visible sibling widgets placed by the same layout whose rectangles intersect, and
    every such widget that sticks out of its parent (cut off): both mean the layout was squeezed below
    what its widgets need."""
    from qtpy.QtWidgets import QWidget

    problems = []
    for parent in [root, *root.findChildren(QWidget)]:
        if not parent.isVisible() or parent.layout() is None:
            continue
        kids = [w for w in parent.children() if isinstance(w, QWidget) and w.isVisible() and not w.isWindow()
                and _in_layout(parent.layout(), w)]
        inside = parent.rect()
        for w in kids:
            if w.width() <= 0 or w.height() <= 0:
                continue
            if not inside.contains(w.geometry()):
                problems.append(f"{_name(w)} {w.geometry()} sticks out of {_name(parent)} {inside}")
        for a, b in combinations(kids, 2):
            if a.geometry().intersects(b.geometry()):
                problems.append(f"{_name(a)} {a.geometry()} overlaps {_name(b)} {b.geometry()}")
    from qtpy.QtWidgets import QScrollArea

    for area in [root, *root.findChildren(QScrollArea)]:
        if isinstance(area, QScrollArea) and area.isVisible() and area.widget() is not None:
            if area.widget().width() > area.viewport().width():
                problems.append(f"{_name(area.widget())} {area.widget().width()} px wide is cut off by its "
                                f"scroll area's {area.viewport().width()} px")
    return problems


def _name(w) -> str:
    text = w.text() if hasattr(w, "text") and callable(w.text) else ""
    return f"{type(w).__name__}({str(text)[:30]!r})" if text else type(w).__name__


def visible_docks_overlap(main) -> list[str]:
    from qtpy.QtWidgets import QDockWidget

    docks = [d for d in main.findChildren(QDockWidget) if shown(d) and not d.isFloating()]
    rects = [(d.windowTitle(), d.geometry()) for d in docks]
    central = main.centralWidget().geometry()
    out = [f"{t} overlaps {u}" for (t, r), (u, s) in combinations(rects, 2) if r.intersects(s)]
    out += [f"{t} overlaps the canvas" for t, r in rects if r.intersects(central)]
    return out


def shown(dock) -> bool:
    """On screen: a tabified dock behind another tab is 'visible' to Qt but has no visible region."""
    return dock.isVisible() and not dock.visibleRegion().isEmpty()


def settle(qtbot, ms=100):
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    qtbot.wait(ms)


# ------------------------------------------------------------------------------------------ the tests

@pytest.fixture
def menu_viewer(make_napari_viewer, qtbot, tiny_model, notes):
    """A viewer with the E34 sample opened from File > Open Sample, and every widget of the plugin
    opened from the Plugins menu's path; the annotation run and a cell clicked."""
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-s2s", "damond_e34")
    docks = {}
    for name in ("Annotate cells", "Batch annotate folder", "Train model"):
        docks[name] = viewer.window.add_plugin_dock_widget("napari-s2s", name)
    dock, widget = docks["Annotate cells"]
    from napari.utils._proxies import PublicOnlyProxy

    assert isinstance(widget.viewer, PublicOnlyProxy)  # what the menu hands a widget
    widget.model_edit.setText(str(tiny_model))
    widget.device_combo.setCurrentText("CPU")
    assert widget.run() is not None, notes
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.annotation is not None, notes
    obj = int(widget.annotation.table.sort_values("area")["Object"].iloc[-1])
    assert widget.explainer.explain_cell(obj, attributions="none") is not None
    settle(qtbot)
    return viewer, docks


def test_explanation_is_a_tab_beside_annotate_cells(menu_viewer, qtbot, notes):
    from qtpy.QtWidgets import QDockWidget

    viewer, docks = menu_viewer
    dock, widget = docks["Annotate cells"]
    main = dock.parentWidget()
    panel = widget.explanation
    exp_dock = panel.parentWidget()
    while exp_dock is not None and not isinstance(exp_dock, QDockWidget):
        exp_dock = exp_dock.parentWidget()
    assert exp_dock is not None and exp_dock.windowTitle() == "Cell explanation"
    assert exp_dock in main.tabifiedDockWidgets(dock), [d.windowTitle() for d in main.tabifiedDockWidgets(dock)]
    # the click raised the explanation tab; Annotate cells is one click away, not stacked below it
    assert shown(exp_dock) and not shown(dock)
    widget.show_controls()
    settle(qtbot)
    assert shown(dock) and not shown(exp_dock)
    # a second click reuses the same dock (no second "Cell explanation")
    obj = int(widget.annotation.table["Object"].iloc[0])
    widget.explainer.explain_cell(obj, attributions="none")
    settle(qtbot)
    titles = [d.windowTitle() for d in main.findChildren(QDockWidget)]
    assert titles.count("Cell explanation") == 1 and shown(exp_dock)
    assert not [n for n in notes if n[0] == "error"], notes


def test_no_widget_overlaps_and_the_window_fits_the_screen(menu_viewer, qtbot):
    viewer, docks = menu_viewer
    dock, widget = docks["Annotate cells"]
    main = dock.window()
    # the window never needs more than a 1600 x 1000 screen, whatever the docks hold
    hint = main.minimumSizeHint()
    assert hint.height() <= SCREEN_H and hint.width() <= SCREEN_W, hint
    main.showNormal()
    main.resize(SCREEN_W, SCREEN_H)
    settle(qtbot, 300)
    assert main.frameGeometry().height() <= SCREEN_H and main.frameGeometry().width() <= SCREEN_W, \
        main.frameGeometry()
    assert not visible_docks_overlap(main)
    # inside every dock, in each tab: nothing overlaps, nothing is cut off
    for tab in ("explanation", "controls"):
        if tab == "controls":
            widget.show_controls()
            settle(qtbot, 200)
        problems = []
        for d, w in docks.values():  # the plugin's widgets (napari's own title bar is not ours)
            if shown(d):
                problems += [f"{d.windowTitle()}: {p}" for p in overlapping_widgets(w)]
        exp = widget.explanation
        if shown(widget.explainer.dock):
            problems += [f"Cell explanation: {p}" for p in overlapping_widgets(exp)]
        assert not problems, "\n".join(problems)
    # and at a small window the panels scroll rather than overlap
    main.resize(1200, 700)
    settle(qtbot, 300)
    assert main.frameGeometry().height() <= 700
    assert not overlapping_widgets(widget)


def test_explanation_panel_shows_the_prompt_and_partners(menu_viewer, qtbot):
    """The prompt box shows the whole prompt of a cell (not about two sentences) at 1600 x 1000."""
    viewer, docks = menu_viewer
    dock, widget = docks["Annotate cells"]
    main = dock.window()
    main.resize(SCREEN_W, SCREEN_H)
    settle(qtbot, 300)
    panel = widget.explanation
    doc_h = panel.prompt.document().size().height()
    assert panel.prompt.viewport().height() >= min(doc_h, 8 * panel.prompt.fontMetrics().lineSpacing()), \
        (panel.prompt.viewport().height(), doc_h)
    if panel.partners.count():
        assert panel.partners.viewport().height() >= min(
            panel.partners.count(), 4) * panel.partners.sizeHintForRow(0)


def test_reopening_a_sample_does_not_merge_channels(make_napari_viewer, qtbot):
    """Opening the same sample twice gives two images in the Image box, not one of 10 channels."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-s2s", "damond_e34")
    viewer.open_sample("napari-s2s", "damond_e34")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-s2s", "Annotate cells")
    groups = widget.image_groups()
    assert len(groups) == 2 and all(len(v) == 5 for v in groups.values()), {k: len(v) for k, v in groups.items()}
    assert len(set(widget.marker_names(groups[widget.image_combo.currentText()]))) == 5
    masks = [lay for lay in viewer.layers if lay.__class__.__name__ == "Labels"]
    assert len({lay.metadata["s2s"]["image"] for lay in masks}) == 2
    np.testing.assert_array_equal(*[np.asarray(m.data) for m in masks])


def test_the_geometry_check_catches_a_squeezed_layout(qtbot):
    """The check above can fail: a fixed-height table squeezed with a row below it (the legend over the
    'Outline cells' row before the docks scrolled) is reported."""
    from qtpy.QtWidgets import QLabel, QTableWidget, QVBoxLayout, QWidget

    w = QWidget()
    lay = QVBoxLayout(w)
    table = QTableWidget(10, 3)
    table.setFixedHeight(300)
    lay.addWidget(table)
    lay.addWidget(QLabel("Outline cells with p below"))
    qtbot.addWidget(w)
    w.setFixedHeight(200)  # what a too-short dock does to its content
    w.show()
    qtbot.waitExposed(w)
    assert overlapping_widgets(w)
    w.setFixedHeight(400)
    qtbot.wait(50)
    assert not overlapping_widgets(w)


def test_marker_name_edits_survive_runs(make_napari_viewer, qtbot, tiny_model, notes):
    """Renaming a marker in the Markers field (PIN -> INS) is used by the run, and still shown and used
    after the run added its layers and after a second run."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-s2s", "damond_e34")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-s2s", "Annotate cells")
    widget.model_edit.setText(str(tiny_model))
    widget.device_combo.setCurrentText("CPU")
    assert widget.markers_edit.text() == "H3, CD99, PIN, CD8a, CDH"
    edit = widget.markers_edit
    edit.setFocus()
    qtbot.keyClick(edit, Qt.Key_A, Qt.ControlModifier)  # what a user does: select all, type
    qtbot.keyClicks(edit, "H3, CD99, INS, CD8a, CDH")
    for run in (1, 2):
        assert widget.run() is not None, notes
        qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
        ann = widget.annotation
        assert ann is not None, notes
        assert "INS" in ann.markers and "PIN" not in ann.markers, (run, ann.markers)
        assert "INS" in ann.cells.columns
        assert widget.markers_edit.text() == "H3, CD99, INS, CD8a, CDH", run
        # the user's name is what the attribution box offers
        names = [widget.attribution_map.combo.itemText(i) for i in range(widget.attribution_map.combo.count())]
        assert "PIN" not in names and "CDH1" not in names and "CD8A" not in names, names
        assert {"INS", "CDH", "CD8a"} <= set(names), names
        tip = widget.attribution_map.combo.itemData(names.index("CDH"), Qt.ToolTipRole)
        assert tip == "model's name: CDH1"
    # the explanation speaks the same names: the prompt, the strongest markers, the plain sentence
    obj = int(ann.table.sort_values("area")["Object"].iloc[-1])
    info = widget.explainer.explain_cell(obj, attributions="none")
    panel = widget.explanation
    text = panel.prompt_text()
    assert "CDH1" not in text and "CD8A" not in text and "PIN" not in text
    assert any(m in text for m in ("INS", "CDH", "CD8a", "H3", "CD99"))
    shown_markers = [a.partition(":")[0] for a in info["anchor_markers"] if a != "nil"]
    for canon in shown_markers:
        assert info["display_names"].get(canon, canon) in panel.markers.text()
    assert "CDH1" not in panel.markers.text() and "CDH1" not in panel.summary.text()
    # another image chosen and back: still the typed names
    viewer.open_sample("napari-s2s", "damond_g01")
    widget.image_combo.setCurrentText("G01")
    assert "PIN" in widget.markers_edit.text()
    widget.image_combo.setCurrentText("E34")
    assert widget.markers_edit.text() == "H3, CD99, INS, CD8a, CDH"


def test_plain_sentence_of_an_explanation():
    """The explanation's first line, from a stand-in attribution: the two markers that drove the call
    with their level words, the partner that mattered most, no model words."""
    from napari_s2s._explanation import plain_summary

    info = {
        "predicted": "beta", "probability": 0.82, "display_names": {"INS": "INS", "SYP": "SYP", "PTPRC": "CD45"},
        "levels": [{"INS": 12.34, "SYP": 8.1, "PTPRC": 0.2}], "percentiles": {"INS": 0.95, "SYP": 0.7, "PTPRC": 0.1},
        "attribution": {"markers": [{"marker": "INS", "score": 0.31}, {"marker": "PTPRC", "score": -0.2},
                                    {"marker": "SYP", "score": 0.12}]},
        "partners": [{"Object": 5, "role": "positive", "distance_um": 8.2, "direction": "south-east",
                      "cell_type": "beta", "score": 0.08},
                     {"Object": 9, "role": "negative", "distance_um": 150.0, "direction": "north",
                      "cell_type": "acinar", "score": -0.01}],
    }
    assert plain_summary(info) == ("Called beta (probability 0.82) mainly for high INS (12.3) and high SYP "
                                   "(8.1); a similar neighbour 8 um south-east, also beta, supported it.")
    info["partners"][0]["score"] = 0.001
    info["partners"][1]["score"] = -0.002
    assert plain_summary(info).endswith("its partner cells barely mattered.")
    info["partners"][1]["score"] = -0.1
    assert "a dissimilar distant cell 150 um north, an acinar cell, argued against it" in plain_summary(info)
    # before the attributions: the strongest marker words, in the user's names
    info.update(attribution=None, anchor_markers=["INS", "PTPRC"])
    assert plain_summary(info) == ("Called beta (probability 0.82); its strongest markers: high INS (12.3), "
                                   "low CD45 (0.2) (which drove the call: see below).")
    info.update(anchor_markers=["nil"])
    assert "none of the model's markers is measurably present" in plain_summary(info)


def test_opaque_types_match_the_legend(menu_viewer, qtbot):
    """The 'Opaque cell types' toggle hides the image's channels and draws the mask opaque: the canvas
    colour at a cell is its legend colour. Untoggled, the channels come back as they were. The
    low-confidence outline is white, a colour no type has."""
    from napari_s2s import _layers
    from spatial2sentence.palette import LOW_CONFIDENCE, label_colors

    viewer, docks = menu_viewer
    dock, widget = docks["Annotate cells"]
    ann = widget.annotation
    channels = [lay for lay in viewer.layers if lay.metadata.get("s2s", {}).get("role") == "channel"]
    before = [lay.visible for lay in channels]
    assert any(before)
    widget.results.opaque_check.setChecked(True)
    assert not any(lay.visible for lay in channels) and widget.mask_layer.opacity == 1.0
    for lay in viewer.layers:  # only the mask on the canvas (the outline layer is drawn on top)
        if lay is not widget.mask_layer:
            lay.visible = False
    mask = np.asarray(widget.mask_layer.data)
    t = ann.table.assign(d=np.hypot(ann.table["x"] - 50, ann.table["y"] - 50)).sort_values("d")
    row = next(r for _, r in t.iterrows() if mask[int(round(r["y"])), int(round(r["x"]))] == r["Object"])
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (row["y"], row["x"])
    camera.zoom = 40
    settle(qtbot, 100)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    px = shot[shot.shape[0] // 2, shot.shape[1] // 2, :3].astype(int)
    want = np.round(np.array(_layers.hex_to_rgba(label_colors(ann.type_labels)[row["cell_type"]])[:3]) * 255)
    assert np.abs(px - want).max() <= 3, (px, want)
    widget.results.opaque_check.setChecked(False)
    assert [lay.visible for lay in channels] == before and widget.mask_layer.opacity == pytest.approx(0.6)
    for lay in channels:  # whatever the user had shown: hidden by the toggle, then restored as it was
        lay.visible = True
    channels[0].visible = False
    widget.results.opaque_check.setChecked(True)
    assert not any(lay.visible for lay in channels)
    widget.results.opaque_check.setChecked(False)
    assert [lay.visible for lay in channels] == [False] + [True] * (len(channels) - 1)
    low = next(lay for lay in viewer.layers if lay.metadata.get("s2s", {}).get("role") == "low_confidence")
    colours = {tuple(np.round(c, 3)) for k, c in low.colormap.color_dict.items() if k and c[3] > 0}
    assert colours == {tuple(np.round(_layers.hex_to_rgba(LOW_CONFIDENCE), 3))}
    assert LOW_CONFIDENCE not in label_colors(ann.type_labels).values()


def _slow_explainer(seen, delay=0.02):
    """A stand-in for the integrated-gradients explainer: ``delay`` s a cell, every marker +0.1, stops
    when its progress callback says so (Cancel); records the object ids asked for in ``seen``."""
    import time

    def explain(model, cells, object_ids, markers=None, progress=None, **options):
        out = []
        for i, o in enumerate(object_ids):
            time.sleep(delay)
            seen.append(o)
            out.append({"object": o, "tokens": [], "partners": [],
                        "markers": [{"marker": m, "score": 0.1} for m in (markers or [])]})
            if progress is not None and progress(i + 1, len(object_ids)) is False:
                break
        return out

    return explain


def test_whole_image_attributions_progress_eta_cancel(menu_viewer, qtbot, monkeypatch):
    """Show: a progress bar of cells done / total, the time left, the cells in view first, the overlay
    filling in; Cancel keeps the cells done; Show again computes only the others."""
    from spatial2sentence import explain as core_explain

    viewer, docks = menu_viewer
    dock, widget = docks["Annotate cells"]
    widget.show_controls()
    seen = []
    monkeypatch.setattr(core_explain, "explain_cells", _slow_explainer(seen, 0.06))  # ~7 s for 113 cells
    ann = widget.annotation
    total = len(ann.table)
    # look at the bottom-right corner of the image: its cells come first
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (float(ann.table["y"].max()), float(ann.table["x"].max()))
    worker = widget.attribution_map.show_attributions("CDH")
    assert worker is not None and widget.attribution_map.progress_box.isVisible()
    assert widget.attribution_map.progress.maximum() == total
    qtbot.waitUntil(lambda: widget.attribution_map.progress.value() >= 40, timeout=60_000)
    assert "left" in widget.attribution_map.eta.text() and f"/ {total} cells" in widget.attribution_map.eta.text()
    settle(qtbot, 100)
    assert not overlapping_widgets(widget)  # the progress row and the time left fit the dock
    # the first cells computed are the ones nearest the canvas centre
    t = ann.table.set_index("Object")
    d = np.hypot(t["x"] - t["x"].max(), t["y"] - t["y"].max())
    first = d.loc[seen[:20]].to_numpy()
    assert first.max() <= np.sort(d.to_numpy())[40], first
    # the overlay fills in while the rest is computed: done cells coloured, the others clear
    qtbot.waitUntil(lambda: any(lay.metadata.get("s2s", {}).get("role") == "attribution" for lay in viewer.layers),
                    timeout=10_000)
    widget.attribution_map.cancel()
    qtbot.waitUntil(lambda: widget.attribution_worker is None, timeout=30_000)
    assert not widget.attribution_map.progress_box.isVisible()
    n_done = len(widget._attributions)
    assert 0 < n_done < total and not widget.attribution_map.complete
    lay = next(lay for lay in viewer.layers if lay.metadata.get("s2s", {}).get("role") == "attribution")
    cd = lay.colormap.color_dict
    clear = [o for o in ann.table["Object"] if str(o) not in widget._attributions]
    assert all(cd[int(o)][3] == 0 for o in clear)
    assert all(cd[int(o)][3] > 0 for o in ann.table["Object"] if str(o) in widget._attributions)
    assert "so far" in widget.attribution_map.note.text()
    # Show again: only the cells not done; a click meanwhile explains its cell without upsetting it
    seen.clear()
    worker = widget.attribution_map.show_attributions("CDH")
    assert widget.attribution_map.show_attributions("CDH") is worker  # a second Show while it runs starts nothing
    clicked = int(clear[-1])
    widget.explainer.explain_cell(clicked)
    qtbot.waitUntil(lambda: widget.attribution_worker is None, timeout=60_000)
    assert not widget.attribution_map.progress_box.isVisible() and widget.attribution_map.button.isEnabled()
    assert widget.explanation.current["object"] == clicked
    assert sorted(set(seen)) == sorted(int(o) for o in clear)  # (the clicked cell may be computed twice)
    assert widget.attribution_map.complete and len(widget._attributions) == total
    lay = next(lay for lay in viewer.layers if lay.metadata.get("s2s", {}).get("role") == "attribution")
    assert all(lay.colormap.color_dict[int(o)][3] > 0 for o in ann.table["Object"])


def test_closing_the_viewer_while_attributions_run(make_napari_viewer, qtbot, tiny_model, notes, monkeypatch):
    """Closing napari while a worker runs stops the worker, and nothing raises (it used to print
    'RuntimeError: wrapped C/C++ object ... has been deleted' from the worker's callbacks)."""
    import sys
    import time

    from spatial2sentence import explain as core_explain

    errors = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: errors.append(exc))
    seen = []
    monkeypatch.setattr(core_explain, "explain_cells", _slow_explainer(seen, 0.05))
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-s2s", "damond_e34")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-s2s", "Annotate cells")
    widget.model_edit.setText(str(tiny_model))
    widget.device_combo.setCurrentText("CPU")
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    worker = widget.attribution_map.show_attributions("CDH")
    qtbot.waitUntil(lambda: len(seen) >= 5, timeout=30_000)
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    viewer.close()
    t0 = time.time()
    while not finished and time.time() - t0 < 20:
        qtbot.wait(50)
    assert finished, "the worker went on after the viewer closed"
    assert len(seen) < len(widget.annotation.table)  # stopped early, not after every cell
    qtbot.wait(300)
    assert not errors, errors


def test_status_line_errors_are_current(make_napari_viewer, qtbot, tiny_model, notes):
    """A missing model folder says 'model folder not found' at once; an error leaves the status line as
    soon as the inputs change (it used to stay there over later work)."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-s2s", "damond_e34")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-s2s", "Annotate cells")
    widget.device_combo.setCurrentText("CPU")
    widget.model_edit.setText("/nonexistent/model")
    assert widget.run() is None
    assert notes[-1][0] == "error" and notes[-1][1] == "/nonexistent/model: model folder not found"
    assert widget.status_label.text() == notes[-1][1]
    widget.model_edit.setText(str(tiny_model))  # the input changed: the old error goes
    assert widget.status_label.text() == ""
    # no mask: an error; a mask added: gone
    mask = next(lay for lay in viewer.layers if lay.__class__.__name__ == "Labels")
    data = np.asarray(mask.data)
    viewer.layers.remove(mask)
    assert widget.run() is None and "no mask" in widget.status_label.text()
    viewer.add_labels(data, name="E34 mask again")
    assert widget.status_label.text() == ""
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert "113 cells of E34 annotated" in widget.status_label.text()


def test_batch_table_error_column_is_readable(make_napari_viewer, qtbot):
    """An error in the batch table wraps over as many lines as it needs instead of being cut to a few
    characters."""
    viewer = make_napari_viewer(show=True)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-s2s", "Batch annotate folder")
    reason = "mask shape (50, 60) differs from the image's (100, 100); segment the image again or fix the pairing"
    widget.add_record({"image": "BAD", "file": "/data/run/img/BAD.tiff", "state": "error", "reason": reason})
    widget.add_record({"image": "E34", "file": "/data/run/img/E34.tiff", "state": "done", "cells": 113,
                       "status": "Onset", "status_probability": 0.5})
    settle(qtbot, 200)
    table = widget.table
    item = table.item(0, 3)
    assert item.text() == f"BAD.tiff: {reason}"
    # a long parenthetical (a marker list) goes to the tooltip
    widget.add_record({"image": "E35", "file": "/data/run/img/E35.tiff", "state": "error",
                       "reason": "the panel shares no marker with the model (table markers: " + ", ".join(
                           f"channel_{i}" for i in range(5)) + "; model markers: H3, SMA, INS, CD38 ...)"})
    assert widget.table.item(2, 3).text() == "E35.tiff: the panel shares no marker with the model (…)"
    assert "channel_4" in widget.table.item(2, 3).toolTip()
    width = table.columnWidth(3)
    fm = table.fontMetrics()
    lines_needed = -(-fm.horizontalAdvance(item.text()) // max(1, width - 8))
    assert lines_needed > 1  # the test means something: the text does not fit on one line
    assert table.rowHeight(0) >= lines_needed * fm.lineSpacing(), (table.rowHeight(0), lines_needed)
    assert table.rowHeight(1) < table.rowHeight(0)
    assert width >= 120


def test_prompt_levels_follow_each_line_and_the_around_line():
    """Each marker word shows the level of the cell its line is about (the cell, then its partners in
    order); the v2 'around' line (the nearest cells on average) gets no single cell's levels."""
    from napari_s2s._explanation import prompt_html

    text = ("[BOS] cell : INS PTPRC ; near <15um east : INS ; far <120um north : PTPRC ; "
            "around : INS ; task type answer")
    levels = [{"INS": 11.0, "PTPRC": 0.5}, {"INS": 22.0}, {"PTPRC": 33.0}]
    out = prompt_html(text, None, {"PTPRC": "CD45"}, levels)
    lines = out.split("<br>")
    assert len(lines) == 4
    assert "11" in lines[0] and "0.5" in lines[0] and "CD45" in lines[0]
    assert "22" in lines[1] and "similar neighbour" in lines[1]
    assert "33" in lines[2] and "dissimilar distant cell" in lines[2]
    assert "the nearest cells on average" in lines[3] and "11" not in lines[3] and "22" not in lines[3]
