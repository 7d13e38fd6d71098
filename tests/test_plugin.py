"""napari plugin: manifest, reader, sample data, annotate widget, explanation panel, overlays, exports.

Run headlessly: QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1200x24" python -m pytest tests/test_plugin*.py
The model is a tiny untrained one (napari_s2s._testing): predictions are meaningless, the code path is
the real one.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spatial2sentence.aliases import canonical_marker

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from spatial2sentence import explain as core_explain  # noqa: E402

from napari_s2s import _explain, _layers  # noqa: E402
from napari_s2s._sample_data import damond_dir, load_damond  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def add_layers(viewer, layer_data):
    from napari.layers import Layer

    out = []
    for data, kwargs, kind in layer_data:
        out.append(viewer.add_layer(Layer.create(data, kwargs, kind)))
    return out


@pytest.fixture
def annotated(make_napari_viewer, qtbot, tiny_model, notes):
    """Viewer with the E34 sample, annotated by the widget."""
    from napari_s2s._sample_data import damond_e34
    from napari_s2s._widget import AnnotateCellsWidget

    viewer = make_napari_viewer(show=True)  # a hidden canvas renders stale frames in screenshots
    add_layers(viewer, damond_e34())
    widget = AnnotateCellsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate cells")
    widget.model_edit.setText(str(tiny_model))
    widget.device_combo.setCurrentText("CPU")
    worker = widget.run()
    assert worker is not None, notes
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.annotation is not None, notes
    return viewer, widget


# ------------------------------------------------------------------------------------------ packaging

def test_manifest_is_valid():
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(REPO / "napari.yaml")
    ids = {c.id for c in pm.contributions.commands}
    assert "napari-s2s.annotate_cells" in ids and "napari-s2s.get_reader" in ids
    for cmd in pm.contributions.commands:  # every python_name resolves
        mod, _, attr = cmd.python_name.partition(":")
        assert callable(getattr(__import__(mod, fromlist=[attr]), attr)), cmd.python_name
    assert (REPO / "napari_s2s" / "napari.yaml").read_text() == (REPO / "napari.yaml").read_text()


# ------------------------------------------------------------------------------------------ reader

def test_reader_tiff_steinbock_mask_and_refusals(tmp_path):
    from napari_s2s._reader import get_reader

    root = damond_dir()
    layers = get_reader(str(root / "img" / "E34.tiff"))(str(root / "img" / "E34.tiff"))
    kinds = [k for _, _, k in layers]
    assert kinds == ["image"] * 5 + ["labels"]
    names = [kw["name"] for _, kw, _ in layers[:5]]
    assert names == ["H3", "CD99", "PIN", "CD8a", "CDH"]  # from panel.csv beside img/
    data, kw, _ = layers[2]
    assert kw["blending"] == "additive"
    assert kw["contrast_limits"][0] == 0 and kw["contrast_limits"][1] == pytest.approx(np.percentile(data, 99.5))
    # steinbock folder: 3 images with masks, side by side
    layers = get_reader(str(root))(str(root))
    assert sum(k == "labels" for *_, k in layers) == 3 and len(layers) == 18
    assert layers[-1][1]["translate"][1] > 200
    # a mask alone opens as Labels
    ml = get_reader(str(root / "masks" / "E34.tiff"))(str(root / "masks" / "E34.tiff"))
    assert ml[0][2] == "labels"
    # what it cannot read: None, no exception
    (tmp_path / "x.csv").write_text("a\n1\n")
    (tmp_path / "broken.tiff").write_bytes(b"II*\x00garbage")
    assert get_reader(str(tmp_path / "x.csv")) is None
    assert get_reader(str(tmp_path / "missing.tiff")) is None
    assert get_reader(str(tmp_path / "broken.tiff")) is None
    assert get_reader(str(tmp_path)) is None


def test_reader_ome_names(tmp_path):
    from spatial2sentence.io import write_tiff_atomic

    from napari_s2s._reader import get_reader

    data = np.random.default_rng(0).gamma(2, 2, size=(3, 20, 30)).astype(np.float32)
    p = write_tiff_atomic(tmp_path / "a.ome.tiff", data, channel_names=["PIN", "GCG", "H3"], ome=True)
    layers = get_reader(str(p))(str(p))
    assert [kw["name"] for _, kw, _ in layers] == ["PIN", "GCG", "H3"]


def test_sample_data():
    from napari_s2s import _sample_data as s

    layers = s.damond_e34()
    assert [k for *_, k in layers].count("labels") == 1
    sim = s.simulated_islet()
    assert len(sim) == 38 and sim[-1][2] == "labels"
    assert sum(kw["visible"] for _, kw, k in sim if k == "image") <= 4
    readme = (s.simulated_dir() / "README.md").read_text()
    assert "semi-synthetic" in readme and "R13" in readme


# ------------------------------------------------------------------------------------------ core of the run

def test_annotate_steps_yields_progress_and_cancels(tiny_model):
    from napari_s2s._annotate import annotate_steps

    image, mask = load_damond("E34")
    msgs = []
    gen = annotate_steps(image.data, image.channels, mask, image="E34", model_path=tiny_model, device="cpu",
                         batch_size=16)
    try:
        while True:
            m = next(gen)
            if m:
                msgs.append(m)
    except StopIteration as stop:
        ann = stop.value
    prog = [m for m in msgs if m[0] == "progress"]
    assert prog[-1][1] == prog[-1][2] == len(ann.table) and len(prog) > 3
    assert not ann.cancelled
    cancel = threading.Event()
    cancel.set()
    gen = annotate_steps(image.data, image.channels, mask, image="E34", model_path=tiny_model, device="cpu",
                         batch_size=16, cancel=cancel)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        assert stop.value.cancelled


# ------------------------------------------------------------------------------------------ widget

def test_widget_annotates_sample(annotated, tmp_path):
    from napari.utils.colormaps import DirectLabelColormap

    viewer, widget = annotated
    ann = widget.annotation
    mask_layer = widget.mask_layer
    assert mask_layer.name == "E34 mask"
    assert widget.markers_edit.text() == "H3, CD99, PIN, CD8a, CDH"
    # colormap: each cell its type's colour, background transparent
    cmap = mask_layer.colormap
    assert isinstance(cmap, DirectLabelColormap)
    colors = _layers.type_colors(ann.type_labels)
    for o, t in zip(ann.table["Object"][:20], ann.table["cell_type"][:20]):
        np.testing.assert_allclose(cmap.color_dict[int(o)], _layers.hex_to_rgba(colors[t]), atol=1e-6)
    assert cmap.color_dict[0][3] == 0
    # features: napari's index column = label value, predictions and every class probability
    f = mask_layer.features
    assert list(f["index"]) == list(ann.table["Object"])
    for lab in ann.type_labels:
        assert f"p_{lab}" in f.columns
    np.testing.assert_allclose(f[[f"p_{t}" for t in ann.type_labels]].sum(1), 1, atol=1e-4)
    assert {"cell_type", "cell_type_probability", "status"} <= set(f.columns)
    # class-id, confidence and low-confidence layers
    roles = {lay.metadata.get("s2s", {}).get("role") for lay in viewer.layers}
    assert {"class_ids", "confidence", "low_confidence"} <= roles
    cls = next(lay for lay in viewer.layers if lay.metadata.get("s2s", {}).get("role") == "class_ids")
    o = int(ann.table["Object"].iloc[0])
    k = ann.type_labels.index(ann.table["cell_type"].iloc[0]) + 1
    assert np.all(cls.data[np.asarray(mask_layer.data) == o] == k)
    # legend counts = table counts; clinical status shown
    assert sum(n for _, n in widget.results.legend_rows()) == len(ann.table) == 113
    # the dock's own progress bar counted every cell, and hides once the run is over
    bar = widget.controls.progress_bar
    assert bar.maximum() == bar.value() == 113 and not bar.isVisible()
    assert ann.image_status["status"] in widget.results.clinical_label.text()
    # exports (atomic writes through spatial2sentence.io)
    csv = widget.results.export_csv(tmp_path / "cells.csv")
    back = pd.read_csv(csv)
    assert len(back) == 113 and "cell_type" in back.columns and "p_beta" in back.columns
    import tifffile

    tif = widget.results.export_class_mask(tmp_path / "classes.tiff")
    np.testing.assert_array_equal(tifffile.imread(tif), cls.data)
    assert (tmp_path / "classes_classes.csv").exists()


def _centroid_cell(widget):
    """A cell whose centroid pixel belongs to it (so a click there hits it)."""
    mask = np.asarray(widget.mask_layer.data)
    h, w = mask.shape
    t = widget.annotation.table
    t = t.assign(d=np.hypot(t["x"] - w / 2, t["y"] - h / 2)).sort_values("d")  # central cells first
    for _, r in t.iterrows():
        y, x = int(round(r["y"])), int(round(r["x"]))
        if mask[y, x] == r["Object"] and r["area"] > 30:
            return int(r["Object"]), (y, x)
    raise AssertionError("no convex cell")


def test_click_opens_explanation(annotated, MouseEvent, qtbot):
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    viewer, widget = annotated
    obj, (y, x) = _centroid_cell(widget)
    layer = widget.mask_layer
    assert viewer.layers.selection.active is layer
    for kind in ("mouse_press", "mouse_release"):
        ev = ReadOnlyWrapper(MouseEvent(type=kind, is_dragging=False, position=(y, x), view_direction=None,
                                        dims_displayed=(0, 1), dims_point=(0, 0), button=1))
        (mouse_press_callbacks if kind == "mouse_press" else mouse_release_callbacks)(layer, ev)
    panel = widget.explanation
    assert panel is not None and panel.current["object"] == obj
    prompt = widget.annotation.model.prompts_for(widget.annotation.cellset, [obj],
                                                 markers=widget.annotation.markers)[0]
    from napari_s2s._explanation import NIL_MEANING, ROLE_WORDS, display_word, level_text

    shown = panel.prompt_text().replace("\u2009", " ").replace(NIL_MEANING, "")  # (nil explained below)
    assert shown.startswith("this cell :")

    # what is shown: the prompt's words in the user's marker names, each marker followed by its
    # measured level in that sentence's cell (the cell, then its partners), the openers in plain words
    words = prompt["text"].split()
    words = words[1:words.index("task")]  # no [BOS], no task line
    names = {canonical_marker(m): m for m in widget.annotation.markers}
    cells = widget.annotation.cells.set_index("Object")
    sentence_cells = [obj] + [p["Object"] for p in prompt["partners"]]
    expected, k, n_partners, opener, first = [], None, 0, True, True
    for w in words:
        if opener:
            if first:  # whose line: the cell (0), its next partner, or no single cell ("around")
                n_partners += w in ("near", "far")
                k = 0 if w == "cell" else n_partners if w in ("near", "far") else None
                first = False
            expected.append({"cell": "this cell", **ROLE_WORDS}.get(w, w))
            opener = w != ":"
        elif w == ";":
            expected.append(w)
            opener, first = True, True
        elif k is None or w == "nil":
            expected.append(display_word(w, names))
        else:
            shown_name = display_word(w, names)
            expected.append(f"{shown_name} {level_text(cells.loc[sentence_cells[k], shown_name])}")
    assert " ".join(shown.split()) == " ".join(" ".join(expected).split())
    assert "near" not in shown and "far" not in shown and "answer" not in shown
    # the plain sentence first: the call and the cell's strongest markers with their levels
    assert panel.summary.text().startswith(f"Called {panel.current['predicted']}")
    assert f"Cell {obj}" in panel.title.text()
    assert panel.partners.count() == len(prompt["partners"])
    # partners drawn once the panel has painted the cell (issue 20: the words first): a ring + one line
    # per partner (and empty slots), in the mask's coordinates
    def partner_layer():
        return next((lay for lay in viewer.layers if lay.metadata.get("s2s", {}).get("role") == "partners"), None)

    if panel.prompt.viewport().isVisible():
        assert partner_layer() is None and widget.explainer._pending_lines[1] == obj
    qtbot.waitUntil(lambda: partner_layer() is not None, timeout=5_000)
    shapes = partner_layer()
    n = _layers.ANCHOR_SHAPES + len(prompt["partners"])
    assert shapes.metadata["s2s"]["object"] == obj and len(shapes.data) >= n
    np.testing.assert_allclose(shapes.data[0].mean(0), [y, x], atol=5)  # the ring (its box) around the cell
    assert all(w == 0 for w in list(shapes.edge_width)[n:])  # unused slots are not drawn
    # clicking a partner in the panel moves the panel to it
    if panel.partners.count():
        item = panel.partners.item(0)
        panel.partners.itemClicked.emit(item)
        assert panel.current["object"] == prompt["partners"][0]["Object"]
    # selecting a label does the same
    layer.selected_label = obj
    assert panel.current["object"] == obj
    assert panel.current["seconds"] < 0.5


def test_screenshot_class_colour_at_centroid(annotated, qtbot):
    viewer, widget = annotated
    obj, (y, x) = _centroid_cell(widget)
    for lay in viewer.layers:
        lay.visible = lay is widget.mask_layer
    widget.mask_layer.opacity = 1.0
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    cam.center = (y, x)
    cam.zoom = 40
    qtbot.wait(50)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    h, w = shot.shape[:2]
    px = shot[h // 2, w // 2, :3].astype(int)
    t = widget.annotation.table.set_index("Object").loc[obj, "cell_type"]
    want = np.round(np.array(_layers.hex_to_rgba(_layers.type_colors(widget.annotation.type_labels)[t])[:3]) * 255)
    assert np.abs(px - want).max() <= 3, (px, want, t)


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: widget.attribution_worker is None, timeout=120_000)


def test_attribution_overlay_with_stand_in_explainer(annotated, monkeypatch, qtbot):
    """The attribution object shape of the brief, from a stand-in explainer (fast, exact values)."""
    viewer, widget = annotated

    def fake(model, cells, object_ids, markers=None, progress=None, **options):
        out = []
        for o in object_ids:
            r = widget.annotation.cells.set_index("Object").loc[o]
            ms = [{"marker": m, "score": float(np.log1p(r[m])) * (1 if k % 2 else -1)}
                  for k, m in enumerate(widget.annotation.markers)]
            out.append({"object": o, "predicted": "beta", "probabilities": {},
                        "tokens": [{"token": m["marker"], "score": m["score"], "part": "anchor"} for m in ms],
                        "markers": ms, "partners": []})
        if progress:
            progress(len(out), len(out))
        return out

    monkeypatch.setattr(core_explain, "explain_cells", fake)
    widget.attribution_map.fill(widget.annotation)
    assert widget.attribution_map.combo.isEnabled()
    widget.attribution_map.show_attributions("PIN")
    _wait(qtbot, widget)
    lay = next(lay for lay in viewer.layers if lay.metadata.get("s2s", {}).get("role") == "attribution")
    assert lay.metadata["s2s"]["what"] == "PIN"
    obj, _ = _centroid_cell(widget)
    v = -float(np.log1p(widget.annotation.cells.set_index("Object").loc[obj, "PIN"]))  # PIN: index 2
    np.testing.assert_allclose(lay.colormap.color_dict[obj], _layers.diverging_rgba(v, lay.metadata["s2s"]["vmax"]),
                               atol=1e-6)
    # repaint for another marker without recomputing
    assert widget.attribution_map.show_attributions("H3") is lay


def test_real_attributions_shade_the_prompt(annotated, qtbot):
    viewer, widget = annotated
    obj, _ = _centroid_cell(widget)
    widget.explainer.explain_cell(obj)
    _wait(qtbot, widget)
    qtbot.waitUntil(lambda: widget.explanation.current.get("attribution") is not None, timeout=60_000)
    att = widget.explanation.current["attribution"]
    assert att["object"] == obj and att["tokens"]
    assert "rgba(" in widget.explanation.prompt.toHtml() or "background-color" in widget.explanation.prompt.toHtml()
    assert "ranked by expression" not in widget.explanation.markers.text()
    # the partner lines (drawn after the panel painted) are widthed by the partners' attribution scores
    _wait(qtbot, widget)
    qtbot.waitUntil(lambda: any(lay.metadata.get("s2s", {}).get("role") == "partners" for lay in viewer.layers),
                    timeout=5_000)
    shapes = next(lay for lay in viewer.layers if lay.metadata.get("s2s", {}).get("role") == "partners")
    partners = widget.explanation.current["partners"]
    assert shapes.metadata["s2s"]["object"] == obj and shapes.nshapes >= _layers.ANCHOR_SHAPES + len(partners)
    scores = [abs(p["score"]) for p in partners]
    assert len(partners) >= 2 and max(scores) > min(scores)  # (this cell's partners are told apart)
    widths = list(shapes.edge_width)[_layers.ANCHOR_SHAPES:_layers.ANCHOR_SHAPES + len(partners)]
    assert int(np.argmax(widths)) == int(np.argmax(scores)) and max(widths) > min(widths)


def test_a_click_shades_words_at_once_then_refines(annotated, monkeypatch):
    """Issue 20: the first shading is one 16-point pass; where it misses the completeness rule the
    refined attribution follows (and is what the cache keeps); where it meets it, nothing is recomputed."""
    from spatial2sentence.explain import is_complete

    viewer, widget = annotated
    obj, _ = _centroid_cell(widget)
    calls = []
    real = _explain.explain_cells

    def counted(*args, **kwargs):
        calls.append(kwargs.get("first_pass", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(_explain, "explain_cells", counted)
    monkeypatch.setattr(_explain, "complete", lambda att: False)  # as for a cell that needs more points
    steps = widget.explainer.explain_steps(obj)
    first = next(steps)
    assert first["n_steps"] == 16 and calls == [True]
    with pytest.raises(StopIteration) as stop:
        next(steps)
    refined = stop.value.value
    assert calls == [True, False]
    assert is_complete(refined) or refined["n_steps"] == 256
    assert widget._attributions[str(obj)] is refined
    monkeypatch.setattr(_explain, "complete", lambda att: True)
    calls.clear()
    assert list(widget.explainer.explain_steps(obj)) == [] and calls == [True]
    # a click's worker computes only once the panel has painted (its event set; PAINT_WAIT_MS at most)
    painted = threading.Event()
    calls.clear()
    worker = threading.Thread(target=lambda: list(widget.explainer.explain_steps(obj, painted=painted)))
    worker.start()
    worker.join(0.05)
    assert calls == [] and worker.is_alive()
    painted.set()
    worker.join(30)
    assert calls == [True]


def test_a_click_shows_its_first_shading_at_once_and_a_slow_pass_moves_to_the_worker(annotated, monkeypatch,
                                                                                     qtbot):
    """Issue 20: the first 16-point pass is computed in the click, so the panel shows shaded words when
    the click returns (the partner lines, drawn after the panel's paint, take their widths from it); the refinement (where the pass misses the
    completeness rule) still comes from a worker. First passes slower than INLINE_FIRST_PASS_S (the
    median of the last 3) send the next clicks' first passes to the worker, faster ones bring them back."""
    from napari_s2s import _explain_view

    viewer, widget = annotated
    ex = widget.explainer
    monkeypatch.setattr(ex, "first_pass_seconds", deque(maxlen=3))
    obj, _ = _centroid_cell(widget)
    _wait(qtbot, widget)
    widget._attributions.clear()
    monkeypatch.setattr(_explain, "complete", lambda att: False)  # as for a cell that needs more points
    info = ex.explain_cell(obj)
    assert info["attribution"] is not None and info["attribution"]["n_steps"] == 16
    assert widget.explanation.current["attribution"] is info["attribution"]
    assert "background-color" in widget.explanation.prompt.toHtml() or "rgba(" in widget.explanation.prompt.toHtml()
    assert widget.explanation.note.text() == "refining attributions…"
    # the partner lines wait for the panel's paint, with the first shading's scores for their widths
    pending = ex._pending_lines
    if pending is not None:
        assert pending[1] == obj and [p["score"] for p in pending[2]] == [p["score"] for p in info["partners"]]
    scores = [abs(p["score"]) for p in info["partners"]]
    widths = _layers.partner_shapes((0.0, 0.0), [(1.0, 1.0)] * len(scores), ["positive"] * len(scores), scores)[3]
    assert int(np.argmax(widths[_layers.ANCHOR_SHAPES:])) == int(np.argmax(scores))
    assert widget.attribution_worker is not None  # the refinement
    _wait(qtbot, widget)
    refined = widget._attributions[str(obj)]
    assert refined["n_steps"] > 16 and widget.explanation.current["attribution"] is refined
    assert widget.explanation.note.text() == ""
    # one slow pass (the first after a load) changes nothing; a slow median moves the next click's
    # first pass to the worker, which keeps timing it
    ex.first_pass_seconds.extend([0.01, 0.01, 5.0])
    assert ex.inline_first_pass
    ex.first_pass_seconds.extend([5.0, 5.0])
    assert not ex.inline_first_pass
    widget._attributions.clear()
    assert ex.explain_cell(obj)["attribution"] is None and widget.attribution_worker is not None
    _wait(qtbot, widget)
    assert widget.explanation.current["attribution"] is not None
    assert ex.first_pass_seconds[-1] < 5.0  # timed in the worker
    # quick passes again: back in the click
    monkeypatch.setattr(_explain_view, "INLINE_FIRST_PASS_S", 10.0)
    widget._attributions.clear()
    assert ex.explain_cell(obj)["attribution"] is not None


def test_stale_attribution_result_is_dropped(annotated, monkeypatch, qtbot):
    """A click's attributions that arrive after the annotation was replaced (a new Run) or cleared
    must not be drawn on the new one, nor raise in the Qt callback."""
    viewer, widget = annotated
    real = _explain.explain_cells
    release = threading.Event()

    def slow(*args, **kwargs):
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(_explain, "explain_cells", slow)
    # both passes in the worker: recent first passes were slow
    monkeypatch.setattr(widget.explainer, "first_pass_seconds", deque([9.0, 9.0, 9.0], maxlen=3))
    obj, _ = _centroid_cell(widget)
    widget._attributions.clear()
    widget.explainer.explain_cell(obj)
    assert widget.attribution_worker is not None
    first = widget.annotation
    widget.annotation = None  # cleared while the worker runs
    release.set()
    _wait(qtbot, widget)
    assert widget.explanation.current.get("attribution") is None
    widget.annotation = first
    # replaced by another annotation while the worker runs
    release.clear()
    widget._attributions.clear()
    widget.explainer.explain_cell(obj)
    widget.annotation = dataclasses.replace(first)
    release.set()
    _wait(qtbot, widget)
    assert widget.explanation.current.get("attribution") is None


def test_failing_attributions_degrade(annotated, monkeypatch, notes, qtbot):
    """The explainer failing: the panel still shows the prompt, without shading, and says why in one
    line; the whole-image map says so too. Nothing raises."""
    viewer, widget = annotated

    def broken(*args, **kwargs):
        raise RuntimeError("no gradients here\nsecond line")

    monkeypatch.setattr(core_explain, "explain_cells", broken)
    widget._attributions.clear()
    obj, _ = _centroid_cell(widget)
    info = widget.explainer.explain_cell(obj, attributions="sync")
    assert info is not None and info["attribution"] is None
    assert widget.explanation.note.text() == "attributions failed: no gradients here"
    assert "cell :" in widget.explanation.prompt_text()
    widget.attribution_map.fill(widget.annotation)
    assert widget.attribution_map.show_attributions("PIN") is not None
    _wait(qtbot, widget)
    assert widget.attribution_map.note.text() == "attributions failed: no gradients here"
    assert notes[-1][0] == "error" and "\n" not in notes[-1][1]
    assert widget.attribution_map.button.isEnabled() and not widget.attribution_map.progress_box.isVisible()


# ------------------------------------------------------------------------------------------ errors

def test_errors_are_one_line_notifications(make_napari_viewer, qtbot, tiny_model, notes, monkeypatch):
    from napari_s2s._widget import AnnotateCellsWidget

    viewer = make_napari_viewer()
    image, mask = load_damond("E34")
    for i, m in enumerate(image.channels):
        viewer.add_image(image.data[i], name=m)
    widget = AnnotateCellsWidget(viewer)
    widget.model_edit.setText(str(tiny_model))
    # no mask
    assert widget.run() is None
    assert notes[-1][0] == "error" and "no mask" in notes[-1][1] and "\n" not in notes[-1][1]
    # a mask of another shape
    viewer.add_labels(np.ones((50, 60), np.uint16), name="wrong mask")
    widget.mask_combo.setCurrentText("wrong mask")
    assert widget.run() is None
    assert "differs" in notes[-1][1]
    # a panel the model cannot read (no shared marker): worker error -> notification
    viewer.add_labels(mask, name="mask")
    widget.mask_combo.setCurrentText("mask")
    widget.markers_edit.setText("foo1, foo2, foo3, foo4, foo5")
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    qtbot.waitUntil(lambda: notes and notes[-1][0] == "error", timeout=5000)
    assert "\n" not in notes[-1][1] and widget.annotation is None
    # CUDA asked for but absent
    import torch

    if not torch.cuda.is_available():
        widget.markers_edit.setText("H3, CD99, PIN, CD8a, CDH")
        widget.device_combo.setCurrentText("CUDA")
        assert widget.run() is None
        assert notes[-1][0] == "error" and "CUDA" in notes[-1][1]


def test_distinctive_marker_on_real_islets_and_a_fixture():
    """The attribution box's first marker: on the real toy crops with their published labels, beta cells
    are set apart by PIN (proinsulin), alpha cells by CD99 (as in Damond et al.'s panel); canonical names
    (CD8A) find the panel's column (CD8a); a single predicted type gives no choice."""
    from conftest import DAMOND_TOY

    from spatial2sentence.tables import load_table

    from napari_s2s._annotate import distinctive_marker

    cells = load_table(DAMOND_TOY, progress=False)
    markers = ["H3", "CD99", "PIN", "CD8A", "CDH1"]
    for image in ("E34", "G01"):
        sub = cells[cells["image"] == image].reset_index(drop=True)
        table = sub[["Object", "cell_type"]]
        assert distinctive_marker(sub, table, markers, of_type="beta") == "PIN"
        assert distinctive_marker(sub, table, markers, of_type="alpha") == "CD99"
        assert distinctive_marker(sub, table, markers) == distinctive_marker(
            sub, table, markers, of_type=table["cell_type"].value_counts().index[0])
    j02 = cells[cells["image"] == "J02"]
    assert distinctive_marker(j02, j02[["Object", "cell_type"]], markers, of_type="beta") is None  # no beta cell
    rng = np.random.default_rng(0)
    fixture = pd.DataFrame({"Object": np.arange(1, 61), "H3": rng.gamma(5, 2, 60), "CD8a": rng.gamma(1, 1, 60)})
    fixture.loc[:39, "CD8a"] += 30  # 40 Tc cells with high CD8, 20 others
    table = fixture[["Object"]].assign(cell_type=["Tc"] * 40 + ["other"] * 20)
    assert distinctive_marker(fixture, table, ["H3", "CD8A"]) == "CD8A"
    assert distinctive_marker(fixture, table.assign(cell_type="Tc"), ["H3", "CD8A"]) is None


def test_attribution_box_starts_on_the_distinctive_marker(annotated):
    from napari_s2s._annotate import distinctive_marker

    _, widget = annotated
    ann = widget.annotation
    widget.attribution_map.fill(ann)
    best = distinctive_marker(ann.cells, ann.table, list(ann.used_markers or ann.markers))
    assert widget.attribution_map.combo.currentText() == (best or widget.attribution_map.combo.itemText(0))


def test_prompt_shows_the_users_marker_names_and_no_template_words():
    from napari_s2s._explanation import display_word, prompt_html

    names = {"CDH1": "CDH", "PTPRC": "CD45", "NKX61": "NKX6-1"}
    assert display_word("CDH1", names) == "CDH" and display_word("CDH1:12", names) == "CDH:12"
    assert display_word("near", names) == "near" and display_word("CD99", names) == "CD99"
    html_text = prompt_html("[BOS] cell : CDH1:12 PTPRC ; near <10um north : nil ; task type answer", None, names)
    assert "CDH:12" in html_text and "CD45" in html_text and "CDH1" in html_text  # the model's name in the tooltip
    assert ">CDH1<" not in html_text and "answer" not in html_text
    assert "none of the model&#x27;s markers is measurably present" in html_text  # nil explained, visibly
    assert "similar neighbour" in html_text and ">near<" not in html_text
