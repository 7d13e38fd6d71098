"""Screenshots of the napari plugin for the docs, taken headlessly the way a user gets there.

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_screenshots.py [--model DIR] [--out DIR]

Everything goes through napari's own menu paths: the sample from *File > Open Sample*
(``viewer.open_sample``), the widgets from the *Plugins* menu (``viewer.window.add_plugin_dock_widget``,
so the widgets get napari's ``PublicOnlyProxy`` viewer, as a user's do), the window at 1600 x 1000.

Writes ``plugin_annotated.png`` (the semi-synthetic islet annotated, cell types opaque as in the
legend), ``plugin_explanation.png`` (a clicked beta-predicted cell: the Cell explanation tab with its
plain sentence, probabilities, the prompt with levels and word shading, partners drawn),
``plugin_attributions.png`` (Attribution of INS computing: the cells in view first, progress bar, time
left, Cancel) and ``plugin_batch.png`` (Batch annotate folder on a folder with the islet, a 5-marker
crop and a broken file: the table with its errors, the islet's overlay opened) into ``docs/`` (or
``--out``, e.g. to compare with the committed ones before replacing them). Model:
``--model`` or the embedded default model (else a tiny untrained one, and the window title says so).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
W, H = 1600, 1000


def close_toasts(viewer):
    """Close napari's notification pop-ups (e.g. a backend warning) so they do not cover the canvas."""
    from qtpy.QtWidgets import QWidget

    for w in viewer.window._qt_window.findChildren(QWidget):
        if type(w).__name__ == "NapariQtNotification":
            w.close()


def wait(cond, timeout=900, settle=10):
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while not cond():
        QApplication.processEvents()
        time.sleep(0.05)
        if time.time() - t0 > timeout:
            raise TimeoutError("worker did not finish")
    for _ in range(settle):
        QApplication.processEvents()
        time.sleep(0.02)


def shot(viewer, out: Path, name: str):
    close_toasts(viewer)
    wait(lambda: True)
    viewer.screenshot(str(out / name), canvas_only=False, flash=False)
    print("wrote", out / name)


def batch_folder(root: Path) -> Path:
    """A folder as a lab has one: the islet (full panel), a real 5-marker crop (the default model
    refuses it: too few of its markers) and a file that is not a TIFF."""
    src = REPO / "sample_data"
    (root / "masks").mkdir(parents=True)
    shutil.copy(src / "simulated_islet" / "ome" / "R13_islet.ome.tiff", root / "R13_islet.ome.tiff")
    shutil.copy(src / "simulated_islet" / "masks" / "R13_islet.tiff", root / "masks" / "R13_islet.tiff")
    shutil.copy(src / "damond_pancreas_toy" / "img" / "E34.tiff", root / "E34.tiff")
    shutil.copy(src / "damond_pancreas_toy" / "masks" / "E34.tiff", root / "masks" / "E34.tiff")
    (root / "broken.tiff").write_bytes(b"II*\x00not really a tiff")
    shutil.copy(src / "damond_pancreas_toy" / "masks" / "E34.tiff", root / "masks" / "broken.tiff")
    return root


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--marker", default="INS", help="marker of the attribution overlay")
    ap.add_argument("--only", default=None, help="annotated, explanation, attributions or batch")
    ap.add_argument("--out", default=str(DOCS), help="folder for the PNGs (default: docs/)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari

    from napari_s2s._testing import default_model_available, make_tiny_model

    model = args.model
    title = "napari-s2s - semi-synthetic islet (real Damond R13 layout)"
    if model is None and not default_model_available():
        model = str(make_tiny_model("/tmp/napari_s2s_tiny_model"))
        title += " (tiny UNTRAINED model: predictions meaningless)"
    viewer = napari.Viewer(title=title, show=True)
    main_window = viewer.window._qt_window
    main_window.resize(W, H)
    viewer.open_sample("napari-s2s", "simulated_islet")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-s2s", "Annotate cells")
    if model:
        widget.model_edit.setText(model)
    wait(lambda: True)
    widget.run()
    wait(lambda: widget.worker is None)
    ann = widget.annotation
    assert ann is not None, widget.status_label.text()
    widget.results.opaque_check.setChecked(True)  # the canvas in exactly the legend's colours
    viewer.reset_view()
    main_window.resize(W, H)
    if args.only in (None, "annotated"):
        shot(viewer, out, "plugin_annotated.png")

    # explanation: the most confident beta-predicted cell near the image centre (else any central cell)
    t = ann.table.copy()
    mask = widget.mask_layer
    h, w = np.asarray(mask.data).shape
    t["d"] = np.hypot(t["x"] - w / 2, t["y"] - h / 2)
    central = t[t["d"] < 0.3 * min(h, w)]
    pick = central[central["cell_type"] == "beta"]
    pick = (pick if len(pick) else central).sort_values("cell_type_probability", ascending=False)
    obj = int(pick["Object"].iloc[0])
    widget.results.opaque_check.setChecked(False)
    mask.opacity = 0.5
    info = widget.explainer.explain_cell(obj, attributions="sync")
    by_id = t.set_index("Object")
    pts = np.array([by_id.loc[obj, ["y", "x"]].to_numpy(float)]
                   + [by_id.loc[p["Object"], ["y", "x"]].to_numpy(float) for p in info["partners"]])
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    cam.center = tuple((pts.min(0) + pts.max(0)) / 2)
    span = float(np.max(pts.max(0) - pts.min(0))) + 40
    cam.zoom = 0.8 * min(main_window.centralWidget().width(), main_window.centralWidget().height()) / span
    if args.only in (None, "explanation"):
        shot(viewer, out, "plugin_explanation.png")

    # attribution overlay while it is computed: the cells in view first, progress, time left, Cancel
    widget.show_controls()
    for lay in viewer.layers:
        if lay.metadata.get("s2s", {}).get("role") in ("partners", "low_confidence"):
            lay.visible = False
    cam.center = (h * 0.45, w * 0.5)
    canvas = main_window.centralWidget()
    cam.zoom = min(canvas.width(), canvas.height()) / (0.45 * min(h, w))  # a part of the islet in view
    if args.only in (None, "attributions"):
        worker = widget.attribution_map.show_attributions(args.marker)
        wait(lambda: widget.attribution_map.progress.value() >= 96 or widget.attribution_worker is None, settle=20)
        shot(viewer, out, "plugin_attributions.png")
        widget.attribution_map.cancel()
        wait(lambda: widget.attribution_worker is None)
        del worker

    # batch: the folder of a lab, the table, the islet's overlay opened from it
    if args.only in (None, "batch"):
        for lay in list(viewer.layers):
            lay.visible = False
        bdock, batch = viewer.window.add_plugin_dock_widget("napari-s2s", "Batch annotate folder")
        tmp = Path(tempfile.mkdtemp(prefix="s2s_batch_"))
        batch.input_edit.setText(str(batch_folder(tmp / "my_images")))
        batch.output_edit.setText(str(tmp / "annotated"))
        if model:
            batch.model_edit.setText(model)
        batch.run()
        wait(lambda: batch.worker is None)
        batch.open_overlay("R13_islet")
        viewer.reset_view()
        main_window.resize(W, H)
        shot(viewer, out, "plugin_batch.png")
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cell {obj}; attribution of {args.marker}; {len(t)} cells")
    viewer.close()


if __name__ == "__main__":
    main()
