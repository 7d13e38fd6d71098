"""Diagnosis: what napari's progress bar costs the plugin's prediction on a small machine.

``benchmarks/plugin.py`` found the widget's prediction of the 5,351-cell simulated image about 1.8x
slower than the same ``annotate_steps`` outside Qt. This script runs that generator three ways in one
process, with a shown viewer: directly (no worker), in a napari ``create_worker`` without a progress
bar, with ``_progress`` (napari's activity-dock progress bar, which the widgets used until this
script showed its cost) and with the widgets' own bar (``RunControls.progress``). It prints the
``predict_s`` of each (median of ``--repeats``) and saves ``results/plugin_progress.json``.

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/plugin_progress.py [--threads 1]

Under Xvfb every repaint is done by the CPU, so the figures are an upper bound for a desktop session.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no OpenMP contention)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    import napari
    import torch
    from napari.qt.threading import create_worker

    from napari_s2s._annotate import annotate_steps
    from spatial2sentence.annotate import load_model
    from plugin import process, simulated_1000

    torch.set_num_threads(args.threads)
    data, mask, channels, n = simulated_1000()
    load_model(None, "cpu")  # loaded once: every variant below reuses it
    viewer = napari.Viewer(show=True)
    viewer.add_labels(mask, name="mask")
    process()

    def direct():
        gen = annotate_steps(data, channels, mask, image="Y15", device="cpu")
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return stop.value

    from qtpy.QtWidgets import QVBoxLayout, QWidget

    from napari_s2s._controls import RunControls

    dock = QWidget()
    controls = RunControls(QVBoxLayout(dock), lambda: None, lambda: None)
    viewer.window.add_dock_widget(dock, name="controls")

    def in_worker(own_bar: bool = False, **kw):
        res = {}
        worker = create_worker(annotate_steps, data, channels, mask, image="Y15", device="cpu",
                               cancel=threading.Event(), _start_thread=False, **kw)
        worker.returned.connect(lambda ann: res.setdefault("ann", ann))
        if own_bar:  # as the widgets do: progress messages move RunControls' bar
            worker.yielded.connect(lambda msg: msg and msg[0] == "progress" and controls.progress(msg[1], msg[2]))
        controls.running(own_bar)
        worker.start()
        process(lambda: "ann" in res and not worker.is_running)
        controls.running(False)
        return res["ann"]

    variants = {
        "direct (no worker, no Qt events)": direct,
        "create_worker, no progress bar": in_worker,
        "create_worker, napari progress bar (widget until now)": lambda: in_worker(
            _progress={"total": 0, "desc": "Annotating"}),
        "create_worker, the widget's own bar (RunControls)": lambda: in_worker(own_bar=True),
    }
    out = {}
    for name, fn in variants.items():
        secs = [fn().timings["predict_s"] for _ in range(args.repeats)]
        out[name] = round(float(np.median(secs)), 2)
        print(f"{name:52} predict {out[name]:6.2f} s  ({', '.join(f'{s:.2f}' for s in secs)})", flush=True)
    res = {"cells": int(n), "torch_threads": args.threads, "cpus": os.cpu_count(), "predict_s_median": out,
           "display": os.environ.get("DISPLAY"), "note": "under Xvfb all repaints are CPU work"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "plugin_progress.json").write_text(json.dumps(res, indent=1) + "\n")
    viewer.close()
    print(f"-> {RESULTS / 'plugin_progress.json'}")


if __name__ == "__main__":
    main()
