"""Screenshots of the napari plugin for the docs, taken headlessly.

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_screenshots.py [--model DIR]

Writes ``docs/plugin_annotated.png`` (the semi-synthetic islet annotated: mask coloured by predicted type,
legend, clinical status), ``docs/plugin_explanation.png`` (a clicked beta-predicted cell: explanation
panel with probability bars, shaded prompt, top markers, partners drawn on the canvas) and
``docs/plugin_attributions.png`` (every cell coloured by the attribution of one marker). Whole window,
dock widgets included. Model: ``--model`` or the embedded default model (else a tiny untrained one, and
the window title says so).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent


def close_toasts(viewer):
    """Close napari's notification pop-ups (e.g. a backend warning) so they do not cover the canvas."""
    from qtpy.QtWidgets import QWidget

    for w in viewer.window._qt_window.findChildren(QWidget):
        if type(w).__name__ == "NapariQtNotification":
            w.close()


def wait(cond, timeout=900):
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while not cond():
        QApplication.processEvents()
        time.sleep(0.05)
        if time.time() - t0 > timeout:
            raise TimeoutError("worker did not finish")
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.02)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--sample", default="simulated", choices=["simulated", "E34", "G01", "J02"])
    ap.add_argument("--marker", default=None, help="marker of the attribution overlay (default: INS or PIN)")
    args = ap.parse_args(argv)

    import napari
    from napari.layers import Layer

    from napari_s2s import _sample_data
    from napari_s2s._testing import default_model_available, make_tiny_model
    from napari_s2s._widget import AnnotateCellsWidget

    model = args.model
    title = "napari-s2s"
    if model is None and not default_model_available():
        model = str(make_tiny_model("/tmp/napari_s2s_tiny_model"))
        title += " (tiny UNTRAINED model: predictions meaningless)"
    layers = _sample_data.simulated_islet() if args.sample == "simulated" else _sample_data._damond(args.sample)
    title += " - semi-synthetic islet (real Damond R13 layout)" if args.sample == "simulated" else \
        f" - Damond 2019 {args.sample} (real IMC)"
    viewer = napari.Viewer(title=title, show=True)
    viewer.window._qt_window.resize(1600, 1100)
    for data, kwargs, kind in layers:
        viewer.add_layer(Layer.create(data, kwargs, kind))
    widget = AnnotateCellsWidget(viewer)
    if model:
        widget.model_edit.setText(model)
    viewer.window.add_dock_widget(widget, name="Annotate cells", area="right")
    wait(lambda: True)
    widget.run()
    wait(lambda: widget.worker is None)
    ann = widget.annotation
    assert ann is not None, widget.status_label.text()
    viewer.reset_view()
    mask = widget.mask_layer
    mask.opacity = 0.75
    wait(lambda: True)
    close_toasts(viewer)
    wait(lambda: True)
    viewer.screenshot(str(DOCS / "plugin_annotated.png"), canvas_only=False, flash=False)

    # explanation: the most confident beta-predicted cell near the image centre (else any central cell)
    t = ann.table.copy()
    h, w = np.asarray(mask.data).shape
    t["d"] = np.hypot(t["x"] - w / 2, t["y"] - h / 2)
    central = t[t["d"] < 0.3 * min(h, w)]
    pick = central[central["cell_type"] == "beta"]
    pick = (pick if len(pick) else central).sort_values("cell_type_probability", ascending=False)
    obj = int(pick["Object"].iloc[0])
    info = widget.explain_cell(obj, attributions="sync")
    pts = [(info and t.set_index("Object").loc[obj, ["y", "x"]].to_numpy(float))]
    for p in info["partners"]:
        pts.append(t.set_index("Object").loc[p["Object"], ["y", "x"]].to_numpy(float))
    pts = np.array(pts)
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    cam.center = tuple((pts.min(0) + pts.max(0)) / 2)
    span = float(np.max(pts.max(0) - pts.min(0))) + 40
    canvas = viewer.window._qt_viewer.canvas.size
    cam.zoom = 0.8 * min(canvas) / span
    wait(lambda: True)
    close_toasts(viewer)
    viewer.screenshot(str(DOCS / "plugin_explanation.png"), canvas_only=False, flash=False)

    # attribution overlay
    markers = list(widget.attr_combo.itemText(i) for i in range(widget.attr_combo.count()))
    what = args.marker or next((m for m in ("INS", "PIN", "GCG") if m in markers), markers[0] if markers else "")
    if widget.attr_combo.isEnabled():
        widget.show_attributions(what)
        wait(lambda: widget.attribution_worker is None)
    widget.show_controls()
    for lay in viewer.layers:
        if lay.metadata.get("s2s", {}).get("role") in ("partners", "low_confidence"):
            lay.visible = False
    viewer.reset_view()
    close_toasts(viewer)
    wait(lambda: True)
    viewer.screenshot(str(DOCS / "plugin_attributions.png"), canvas_only=False, flash=False)
    print(f"wrote docs/plugin_*.png (cell {obj}, attribution of {what}); {len(t)} cells")
    viewer.close()


if __name__ == "__main__":
    main()
