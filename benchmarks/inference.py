"""Inference speed of the default model on CPU: one-pass constrained scoring vs ``model.generate``.

Data: cells measured from semi-synthetic Damond-panel images (``s2s simulate``, seed 0, images of the
held-out donors) or, with ``--cells``, any cells table. ``torch.set_num_threads(2)``.

* **one-pass**: :meth:`S2SModel.predict_cells` (``tasks=("type",)``): prompt building, pairs, one
  forward pass per prompt (batched, left-padded, logits at the answer position only), softmax over the
  16 cell-type tokens -> a probability for every class. Also timed with type + clinical status.
* **generate**: the same prompts (token ids from :meth:`S2SModel.prompts_for`), greedy
  ``model.lm.generate`` until EOS (max 3 new tokens), the answer word read from the generated token:
  (a) one prompt at a time, as a per-cell decoding loop does; (b) batched (left padding), the fairest
  generate baseline. Generation gives one label, not a probability per class. Prompt building for the
  generate runs is NOT timed (only the decoding), which favours generate.

Results: ``benchmarks/results/inference.json``.

    python benchmarks/inference.py [--model DIR] [--n-cells 3000] [--n-generate 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
LAYOUTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "damond_diabetes_layouts" / "cells.csv.gz"


def simulated_cells(donors=("6126", "6414", "6180")):
    import pandas as pd

    from spatial2sentence.simulate import simulate_dataset

    lay = pd.read_csv(LAYOUTS, usecols=["imageID", "case"])
    images = [sorted(lay.loc[lay["case"].astype(str) == d, "imageID"].unique())[0] for d in donors]
    from spatial2sentence.tables import measure_steinbock

    with tempfile.TemporaryDirectory() as tmp:
        simulate_dataset(LAYOUTS, Path(tmp) / "sim", images=list(images), seed=0)
        df = measure_steinbock(Path(tmp) / "sim", progress=False)
    return df


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    ap.add_argument("--cells", default=None, help="cells CSV (default: simulate 3 held-out-donor images)")
    ap.add_argument("--n-cells", type=int, default=3000)
    ap.add_argument("--n-generate", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import pandas as pd
    import torch

    from spatial2sentence.model import S2SModel
    from spatial2sentence.sentences import type_token

    torch.set_num_threads(args.threads)
    model = S2SModel.from_pretrained(args.model, device="cpu")
    df = pd.read_csv(args.cells) if args.cells else simulated_cells()
    first = df["image"].iloc[0] if "image" in df.columns else None
    # one image's worth of cells per run keeps the pairs realistic; take whole images up to n-cells
    if "image" in df.columns:
        keep, tot = [], 0
        for im, g in df.groupby("image", sort=False):
            keep.append(g)
            tot += len(g)
            if tot >= args.n_cells:
                break
        df = pd.concat(keep).head(args.n_cells)
    n = len(df)
    model.predict_cells(df.head(200), tasks=("type",))  # warm-up

    t0 = time.perf_counter()
    pred = model.predict_cells(df, tasks=("type",), batch_size=args.batch_size)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.predict_cells(df, tasks=("type", "status"), batch_size=args.batch_size)
    t_both = time.perf_counter() - t0

    # generate baselines on the same prompts
    ng = min(args.n_generate, n)
    sub = df.head(ng)
    prompts = model.prompts_for(sub)
    tok = model.tokenizer
    lm = model.lm
    gen_kw = dict(max_new_tokens=3, do_sample=False, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    inv = {tok.vocab[type_token(t)]: t for t in model.type_labels}

    def answer(ids):
        return next((inv[i] for i in ids if i in inv), None)

    with torch.inference_mode():
        lm.generate(torch.tensor([prompts[0]["tokens"]]), attention_mask=torch.ones(1, len(prompts[0]["tokens"]),
                    dtype=torch.long), **gen_kw)  # warm-up
        t0 = time.perf_counter()
        gen1 = []
        for p in prompts:
            ids = torch.tensor([p["tokens"]])
            out = lm.generate(ids, attention_mask=torch.ones_like(ids), **gen_kw)
            gen1.append(answer(out[0, ids.shape[1]:].tolist()))
        t_gen1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        genb = []
        for c0 in range(0, ng, args.batch_size):
            seqs = [p["tokens"] for p in prompts[c0:c0 + args.batch_size]]
            ids, mask = tok.pad_batch(seqs, left=True)
            ids, mask = torch.as_tensor(ids), torch.as_tensor(mask)
            out = lm.generate(ids, attention_mask=mask, **gen_kw)
            genb += [answer(r[ids.shape[1]:].tolist()) for r in out]
        t_genb = time.perf_counter() - t0

    one_pass_labels = pred.cells["cell_type"].head(ng).tolist()
    res = {
        "model": str(args.model or "default"),
        "n_parameters": model.num_parameters(),
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cells": n,
        "data": "cells table given" if args.cells else "3 semi-synthetic images of held-out donors (s2s simulate seed 0)",
        "one_pass": {
            "seconds": round(t_one, 3), "cells_per_s": round(n / t_one, 1),
            "includes": "pairs + prompts + forward + softmax over all 16 type tokens",
        },
        "one_pass_type_and_status": {"seconds": round(t_both, 3), "cells_per_s": round(n / t_both, 1)},
        "generate_one_at_a_time": {"cells": ng, "seconds": round(t_gen1, 3), "cells_per_s": round(ng / t_gen1, 1)},
        "generate_batched": {"cells": ng, "seconds": round(t_genb, 3), "cells_per_s": round(ng / t_genb, 1),
                             "batch_size": args.batch_size},
        "speedup_vs_generate_one_at_a_time": round((n / t_one) / (ng / t_gen1), 1),
        "speedup_vs_generate_batched": round((n / t_one) / (ng / t_genb), 1),
        "agreement_generate_vs_one_pass_argmax": round(float(np.mean([a == b for a, b in zip(gen1, one_pass_labels)])), 4),
        "generate_answers_outside_label_set": int(sum(a is None for a in gen1)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()]},
        "note": "wall clock on a shared 2-core machine; generate timings exclude prompt building",
    }
    print(f"one-pass constrained scoring: {res['one_pass']['cells_per_s']:.0f} cells/s "
          f"({n} cells, type only; {res['one_pass_type_and_status']['cells_per_s']:.0f} cells/s with status)")
    print(f"generate, one prompt at a time: {res['generate_one_at_a_time']['cells_per_s']:.1f} cells/s "
          f"-> one-pass is {res['speedup_vs_generate_one_at_a_time']}x faster")
    print(f"generate, batched ({args.batch_size}): {res['generate_batched']['cells_per_s']:.1f} cells/s "
          f"-> one-pass is {res['speedup_vs_generate_batched']}x faster")
    print(f"same answers (generate vs one-pass argmax): {res['agreement_generate_vs_one_pass_argmax']:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inference.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"saved {RESULTS / 'inference.json'}")


if __name__ == "__main__":
    main()
