"""Demo: ``python -m napari_s2s.demo [--headless] [--out DIR] [--model DIR]``.

With a display: opens napari with the "Annotate cells" dock and the sample data loaded (the real Damond
pancreas image E34 and its mask, plus the semi-synthetic islet); press Run. Without a display (no
``DISPLAY`` / ``WAYLAND_DISPLAY``) or with ``--headless``: annotates the sample data without Qt, prints
the cell counts per type and the clinical status of each image and writes one CSV per image to
``out/plugin_demo/``.

The embedded default model is used when installed; otherwise a tiny UNTRAINED model is made so the
path runs end to end, and the demo says its predictions are meaningless.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

from spatial2sentence.domain import PanelCoverageError
from spatial2sentence.errors import S2SInputError
from spatial2sentence.io import write_csv_atomic

from ._sample_data import DAMOND_IMAGES, load_damond, load_simulated, simulated_dir
from ._testing import default_model_available, make_tiny_model


def _model_path(given: str | None) -> tuple[str | None, bool]:
    """(model path or None for the embedded default, is_placeholder)."""
    if given:
        return given, False
    if default_model_available():
        return None, False
    path = make_tiny_model(Path(tempfile.gettempdir()) / "napari_s2s_demo_tiny_model")
    return str(path), True


def _warn_placeholder():
    print("NOTE: the embedded default model is not installed; using a tiny UNTRAINED model, so the cell "
          "types below are meaningless (they only show that the pipeline runs).", file=sys.stderr)


def headless(out: Path, model: str | None = None) -> int:
    from ._annotate import annotate  # lazy: imports torch (5 s), which --help must not wait for

    model_path, placeholder = _model_path(model)
    if placeholder:
        _warn_placeholder()
    jobs = [(name, lambda n=name: load_damond(n), "real Damond 2019 IMC") for name in DAMOND_IMAGES]
    if simulated_dir().is_dir():
        jobs.append(("simulated islet", load_simulated, "semi-synthetic"))
    out.mkdir(parents=True, exist_ok=True)
    rc = 0
    for label, load, kind in jobs:
        partial = None
        try:
            image, mask = load()
            kw = dict(image=image.name, pixel_size_um=image.pixel_size_um, model_path=model_path, device="auto")
            try:
                ann = annotate(image.data, image.channels, mask, **kw)
            except PanelCoverageError as err:
                # the real crops carry 5 of the panel's markers: shown anyway, marked unreliable
                partial = str(err)
                ann = annotate(image.data, image.channels, mask, allow_partial_panel=True, **kw)
        except S2SInputError as err:
            print(f"error: {err}", file=sys.stderr)
            rc = 1
            continue
        counts = pd.Series(ann.table["cell_type"]).fillna("unassigned").value_counts()
        st = ann.image_status
        print(f"\n{image.name} ({kind}): {len(ann.table)} cells annotated in {ann.seconds:.1f} s")
        if partial:
            print(f"  PARTIAL PANEL, calls unreliable (the plugin refuses this by default): {partial}")
        print("  " + ", ".join(f"{t} {n}" for t, n in counts.items()))
        if st.get("status") and not st.get("status_confident", True):
            print(f"  clinical status: uncertain (most likely {st['status']}, p = {st['status_probability']:.2f})")
        elif st.get("status"):
            probs = ", ".join(f"{k[len('p_status_'):]} {v:.2f}" for k, v in st.items() if k.startswith("p_status_"))
            print(f"  clinical status: {st['status']} (p = {st['status_probability']:.2f}; {probs})")
        if ann.unknown_markers:
            print(f"  markers unknown to the model (ignored): {', '.join(ann.unknown_markers)}")
        path = write_csv_atomic(ann.table, out / f"{image.name}_cells.csv")
        print(f"  wrote {path}")
    return rc


def gui(model: str | None = None) -> int:
    """napari as a user opens it: the sample from File > Open Sample, Annotate cells from the Plugins
    menu (napari's own paths, so the demo shows what a user gets)."""
    import napari  # lazy: 7 s to import, and the headless run does without it

    model_path, placeholder = _model_path(model)
    if placeholder:
        _warn_placeholder()
    viewer = napari.Viewer(title="napari-s2s demo")
    # the default model reads the full panel of the islet; other models the real 5-marker crop
    sample = "simulated_islet" if simulated_dir().is_dir() and model_path is None else "damond_e34"
    viewer.open_sample("napari-s2s", sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-s2s", "Annotate cells")
    if model_path:
        widget.model_edit.setText(model_path)
    napari.run()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m napari_s2s.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--headless", action="store_true", help="annotate the sample data without a window")
    ap.add_argument("--out", default="out/plugin_demo", help="folder for the per-cell CSVs (headless)")
    ap.add_argument("--model", default=None, help="model folder (default: the embedded default model)")
    args = ap.parse_args(argv)
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if args.headless or not has_display:
        if not args.headless:
            print("No display found (DISPLAY / WAYLAND_DISPLAY unset): running the headless annotation of the "
                  "sample data instead of opening napari.")
        return headless(Path(args.out), args.model)
    return gui(args.model)


if __name__ == "__main__":
    sys.exit(main())
