"""Cold start of the plugin (issue 20): the first Run in a fresh napari process, model load included.

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/cold_start.py

Each case runs in its own fresh Python process (nothing imported or cached before): napari opens, the
semi-synthetic sample islet (609 cells, 37 markers) is opened from File > Open Sample, the Annotate cells
widget is opened from the Plugins menu path (``viewer.window.add_plugin_dock_widget``), and Run is
pressed

* ``immediately``: as soon as the widget is shown (the background warm-up has only just started);
* ``after 5 s``: the time a user takes to check the layers and the marker names;
* ``after the warm-up``: once the widget's background load + first prediction has finished.

Reported: Run -> coloured layer (``widget.last_run_seconds``), and the widget's opening time. Also
``s2s predict`` on a missing file (the time to the error message). Target (issue 20): first Run < 3 s
including the model load; ``s2s predict`` on a missing file < 2 s. Writes ``benchmarks/results/cold_start.json``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
mode = sys.argv[1]
t0 = time.perf_counter()
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=True)
viewer.open_sample("napari-s2s", "simulated_islet")
t1 = time.perf_counter()
_, widget = viewer.window.add_plugin_dock_widget("napari-s2s", "Annotate cells")
widget.device_combo.setCurrentText("CPU")
QApplication.processEvents()
t2 = time.perf_counter()
if mode == "after_5s":
    end = time.time() + 5
    while time.time() < end:
        QApplication.processEvents(); time.sleep(0.02)
elif mode == "after_warm_up" and widget.warm_up is not None:
    while widget.warm_up.is_alive():
        QApplication.processEvents(); time.sleep(0.02)
t3 = time.perf_counter()
widget.run()
deadline = time.time() + 180
while (widget.worker is not None or widget.annotation is None) and time.time() < deadline:
    QApplication.processEvents(); time.sleep(0.005)
QApplication.processEvents()
print(json.dumps({"mode": mode, "napari_and_sample_s": round(t1 - t0, 3), "open_widget_s": round(t2 - t1, 3),
                  "waited_s": round(t3 - t2, 3), "run_to_coloured_s": round(widget.last_run_seconds, 3),
                  "cells": int(len(widget.annotation.table))}))
viewer.close()
"""


def main() -> dict:
    cases = []
    for mode in ("immediately", "after_5s", "after_warm_up"):
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, cwd=ROOT,
                             timeout=300)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not line:
            raise SystemExit(f"case {mode} failed:\n{out.stderr[-2000:]}")
        cases.append(json.loads(line[-1]))
        print(cases[-1], flush=True)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "spatial2sentence.cli", "predict", "missing.tiff", "missing_mask.tiff",
                        "--out", "out/missing"], capture_output=True, text=True, cwd=ROOT)
    missing = {"seconds": round(time.perf_counter() - t0, 3), "exit_code": p.returncode,
               "message": (p.stderr or p.stdout).strip().splitlines()[-1][:200]}
    print("s2s predict missing.tiff:", missing, flush=True)
    import os

    res = {"cases": cases, "predict_missing_file": missing, "cpu": platform.machine(),
           "cores": os.cpu_count(), "load_before": os.getloadavg()[0],
           "command": 'QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/cold_start.py'}
    path = ROOT / "benchmarks" / "results" / "cold_start.json"
    path.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
