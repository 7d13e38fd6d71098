"""Inference speed of the attention modes (``ModelSettings.attention``): causal, prefix and sentence.

The embedded default model (causal) is timed as it is and with each other mode switched on for the same
weights (:meth:`S2SModel.number_prompts`): the answers of a switched model mean nothing, its speed is what
a model trained with that mode costs (the same network, prompts and batches; only the attention mask
differs: the causal path passes a 2D padding mask, the other modes a 4D additive mask built per batch,
:func:`spatial2sentence.positions.attention_mask`). The modes run interleaved, each timing the median of
``--repeats`` rounds, so a shared machine slows them alike. Cells: semi-synthetic images of the held-out
donors (as ``benchmarks/inference.py``) or ``--cells``. Cell type + clinical status, as ``s2s predict``
gives them; float32; ``--threads`` torch threads. Results: ``benchmarks/results/attention_speed.json``.

    python benchmarks/attention_speed.py [--cells CSV] [--n-cells 3000] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
MODES = ("causal", "prefix", "sentence")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default=None, help="cells CSV (default: simulate 3 held-out-donor images)")
    ap.add_argument("--n-cells", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "attention_speed.json"))
    args = ap.parse_args()

    import torch

    from spatial2sentence.model import S2SModel
    from spatial2sentence.threads import torch_threads

    if args.cells:
        df = pd.read_csv(args.cells)
    else:
        sys.path.insert(0, str(HERE))
        from inference import simulated_cells

        df = simulated_cells()
    df = df.head(args.n_cells)
    model = S2SModel.from_pretrained(None, device="cpu")
    trained_mode = model.model_settings.attention
    times = {m: [] for m in MODES}
    with torch_threads(args.threads), torch.inference_mode():
        model.predict_cells(df.head(200))  # warm-up
        for _ in range(args.repeats):
            for mode in MODES:
                model.model_settings.attention = mode
                model.number_prompts()
                t0 = time.perf_counter()
                model.predict_cells(df, tasks=("type", "status"))
                times[mode].append(time.perf_counter() - t0)
    model.model_settings.attention = trained_mode
    model.number_prompts()
    n = len(df)
    res = {"model": model.info.get("name", "default"), "trained_attention": trained_mode, "cells": n,
           "threads": args.threads, "repeats": args.repeats, "dtype": "float32",
           "machine": f"{platform.machine()}, python {platform.python_version()}, torch {torch.__version__}",
           "type_and_status": {m: {"seconds_median": round(float(np.median(t)), 3),
                                   "cells_per_s": round(n / float(np.median(t)), 1)} for m, t in times.items()}}
    Path(args.out).write_text(json.dumps(res, indent=1))
    for m in MODES:
        r = res["type_and_status"][m]
        print(f"{m:9s} type + status: {r['cells_per_s']:8.1f} cells/s ({r['seconds_median']} s for {n} cells, "
              f"median of {args.repeats})")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
