"""Our Llama read without transformers (``spatial2sentence.lite_llama``) against transformers, side by side.

    python benchmarks/backends.py [--threads 2] [--repeats 5]

For each backend (``auto``: the lite Llama; ``transformers``):

* cold: a fresh Python process imports the library, loads the embedded default model and predicts cell
  type + status for the 609 cells of the semi-synthetic sample islet (the plugin's sample), timed from
  the process start (the import of torch included, as a user pays it);
* warm: in one process, the median of ``--repeats`` predictions of the same cells at ``--threads``
  torch threads, and the largest difference of the two backends' probabilities.

Writes ``benchmarks/results/backends.json``. Run it on a quiet machine: both backends are timed in the
same run, so they share its conditions.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE = ROOT / "sample_data" / "simulated_islet"

COLD = r"""
import sys, time, json
t0 = time.perf_counter()
from spatial2sentence.io import read_image, read_mask
from spatial2sentence.annotate import annotate_image
from spatial2sentence.model import S2SModel
sample = sys.argv[2]
img = read_image(sample + "/ome/R13_islet.ome.tiff", panel=sample + "/panel.csv")
mask = read_mask(sample + "/masks/R13_islet.tiff")
t1 = time.perf_counter()
model = S2SModel.from_pretrained(None, device="cpu", backend=sys.argv[1])
t2 = time.perf_counter()
ann = annotate_image(model, img, mask)
t3 = time.perf_counter()
print(json.dumps({"import_and_read_s": round(t1 - t0, 3), "load_s": round(t2 - t1, 3), "predict_s": round(t3 - t2, 3),
                  "total_s": round(t3 - t0, 3), "cells": int(len(ann.table)),
                  "transformers_imported": any(k.split(".")[0] == "transformers" for k in sys.modules)}))
"""


def cold(backend: str) -> dict:
    out = subprocess.run([sys.executable, "-c", COLD, backend, str(SAMPLE)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm(threads: int, repeats: int) -> dict:
    import numpy as np

    from spatial2sentence.io import read_image, read_mask
    from spatial2sentence.measure import measure_cells
    from spatial2sentence.model import S2SModel

    img = read_image(SAMPLE / "ome" / "R13_islet.ome.tiff", panel=SAMPLE / "panel.csv")
    cells = measure_cells(img, read_mask(SAMPLE / "masks" / "R13_islet.tiff"))
    res, probs = {}, {}
    for backend in ("auto", "transformers"):
        model = S2SModel.from_pretrained(None, device="cpu", backend=backend)
        model.predict_cells(cells, threads=threads)  # first-call setup
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            p = model.predict_cells(cells, threads=threads)
            times.append(time.perf_counter() - t0)
        probs[backend] = p.cells[[c for c in p.cells.columns if c.startswith("p_")]].to_numpy(float)
        med = float(np.median(times))
        res[backend] = {"median_s": round(med, 4), "cells_per_s": round(len(cells) / med, 1),
                        "lm": type(model.lm).__name__}
    res["max_probability_difference"] = float(np.abs(probs["auto"] - probs["transformers"]).max())
    res["cells"] = int(len(cells))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    out = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores", "command":
           f"python benchmarks/backends.py --threads {args.threads} --repeats {args.repeats}",
           "cold": {b: cold(b) for b in ("auto", "transformers")}, "warm": warm(args.threads, args.repeats)}
    for b, r in out["cold"].items():
        print(f"cold  {b:12s} import+read {r['import_and_read_s']:.2f} s  load {r['load_s']:.2f} s  "
              f"predict {r['predict_s']:.2f} s  total {r['total_s']:.2f} s  ({r['cells']} cells; "
              f"transformers imported: {r['transformers_imported']})")
    for b in ("auto", "transformers"):
        r = out["warm"][b]
        print(f"warm  {b:12s} {r['median_s']:.3f} s  {r['cells_per_s']:.0f} cells/s  ({r['lm']})")
    print(f"largest probability difference: {out['warm']['max_probability_difference']:.2e}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backends.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
