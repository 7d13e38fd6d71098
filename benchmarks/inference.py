"""Inference speed of the default model: one-pass constrained scoring vs ``model.generate``.

Data: cells measured from semi-synthetic Damond-panel images (``s2s simulate``, seed 0, images of the
held-out donors) or, with ``--cells``, any cells table. ``torch.set_num_threads(2)``; on CPU by
default, ``--device cuda`` on a GPU (the same comparison, each dtype given in ``--dtypes``).

Two answers per cell, as ``s2s predict`` gives them: the cell type, and the cell type + the clinical
status. Each in the weights' float32 (the CPU default) and bfloat16 (``--dtype bfloat16``; fast only on
CPUs with AMX / AVX512-BF16 units, whose presence is recorded); every method runs in the same dtype.

* **one-pass**: :meth:`S2SModel.predict_cells`: pairs, prompt building, one forward pass per cell
  (batched, left-padded, logits at the answer position only; type and status share the context pass),
  softmax over the label tokens -> a probability for every class.
  The same one-pass scoring through transformers' plain forward (the last layer at every position) is
  timed too: what the answer-position shortcut saves.
* **generate**: the same prompts (token ids from :meth:`S2SModel.prompts_for`, one prompt per task),
  greedy ``model.lm.generate`` until EOS (max 3 new tokens), the answer word read from the generated
  token: (a) one prompt at a time, as a per-cell decoding loop does; (b) batched (left padding), the
  fairest generate baseline. Generation gives one label, not a probability per class. Prompt building
  for the generate runs is NOT timed (only the decoding), which favours generate.

Each timing is the median of ``--repeats`` runs (the machine may be shared). Results:
``benchmarks/results/inference.json`` and ``inference.png``.

    python benchmarks/inference.py [--model DIR] [--device cpu|cuda] [--n-cells 3000] [--n-generate 300] [--repeats 3]
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
LAYOUTS = Path(os.environ.get("S2S_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "damond_diabetes_layouts" / "cells.csv.gz"


def simulated_cells(donors=("6126", "6414", "6180")):
    import pandas as pd

    from spatial2sentence.bench.simulate import simulate_dataset

    lay = pd.read_csv(LAYOUTS, usecols=["imageID", "case"])
    images = [sorted(lay.loc[lay["case"].astype(str) == d, "imageID"].unique())[0] for d in donors]
    from spatial2sentence.tables import measure_steinbock

    with tempfile.TemporaryDirectory() as tmp:
        simulate_dataset(LAYOUTS, Path(tmp) / "sim", images=list(images), seed=0)
        df = measure_steinbock(Path(tmp) / "sim", progress=False)
    return df


def cpu_bf16_units() -> list[str]:
    """The CPU's native bf16 matrix features (Linux /proc/cpuinfo flags), e.g. amx_bf16, avx512_bf16."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({f for f in flags.split() if f in ("amx_bf16", "avx512_bf16", "amx_tile")})


def median_time(fn, repeats: int):
    """(median seconds, last result) of ``repeats`` calls of ``fn``."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def measure_dtype(args, df, dtype: str) -> dict:
    import torch

    from spatial2sentence.model import S2SModel
    from spatial2sentence.sentences import status_token, type_token

    # through transformers: the comparison decodes with its `generate`, which our plain-torch reader
    # (spatial2sentence.lite_llama, what predict uses by default) does not have; warm, both score at the
    # same speed (benchmarks/backends.py: 1,368 against 1,383 cells/s)
    model = S2SModel.from_pretrained(args.model, device=args.device, dtype=dtype, backend="transformers")
    n = len(df)
    model.predict_cells(df.head(200), tasks=("type", "status"))  # warm-up
    res: dict = {"dtype": dtype}
    pred = None
    for name, tasks in (("type", ("type",)), ("type_and_status", ("type", "status"))):
        sec, p = median_time(lambda: model.predict_cells(df, tasks=tasks, batch_size=args.batch_size), args.repeats)
        pred = p if name == "type" else pred
        res[f"one_pass_{name}"] = {"cells": n, "seconds": round(sec, 3), "cells_per_s": round(n / sec, 1)}
    # the same one-pass scoring through transformers' plain forward (every layer at every position):
    # what the last-layer-at-the-answer shortcut of spatial2sentence.predict saves
    shortcut = model.lm._s2s_answer_shortcut_ok
    model.lm._s2s_answer_shortcut_ok = False
    try:
        for name, tasks in (("type", ("type",)), ("type_and_status", ("type", "status"))):
            sec, _ = median_time(lambda: model.predict_cells(df, tasks=tasks, batch_size=args.batch_size),
                                 args.repeats)
            res[f"one_pass_plain_forward_{name}"] = {"cells": n, "seconds": round(sec, 3),
                                                     "cells_per_s": round(n / sec, 1)}
    finally:
        model.lm._s2s_answer_shortcut_ok = shortcut
    res["answer_position_shortcut_used"] = bool(shortcut)

    # generate is given token ids only: a model whose words carry values or whose lines share position ids
    # (v2) reads something else through it, so its answers and speed say nothing about one-pass
    from spatial2sentence.positions import line_sep

    res["generate_comparable"] = not model.sentence.values and line_sep(model.lm) is None
    if not res["generate_comparable"]:
        res["_cell_types"] = pred.cells["cell_type"].tolist()
        return res
    ng = min(args.n_generate, n)
    # prompts of the first ng cells with partners found among ALL the cells, exactly as one-pass saw them
    prompts = {t: model.prompts_for(df, task=t)[:ng] for t in ("type", "status")}
    tok, lm = model.tokenizer, model.lm
    gen_kw = dict(max_new_tokens=3, do_sample=False, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    answers = {tok.vocab[type_token(t)]: t for t in model.type_labels}
    answers.update({tok.vocab[status_token(s)]: s for s in model.status_labels})

    def answer(ids):
        return next((answers[i] for i in ids if i in answers), None)

    def one_at_a_time(tasks):
        got = {t: [] for t in tasks}
        for i in range(ng):
            for t in tasks:
                ids = torch.tensor([prompts[t][i]["tokens"]], device=model.device)
                out = lm.generate(ids, attention_mask=torch.ones_like(ids), **gen_kw)
                got[t].append(answer(out[0, ids.shape[1]:].tolist()))
        return got

    def batched(tasks):
        got = {t: [] for t in tasks}
        for t in tasks:
            for c0 in range(0, ng, args.batch_size):
                ids, mask = tok.pad_batch([p["tokens"] for p in prompts[t][c0:c0 + args.batch_size]], left=True)
                ids, mask = torch.as_tensor(ids, device=model.device), torch.as_tensor(mask, device=model.device)
                out = lm.generate(ids, attention_mask=mask, **gen_kw)
                got[t] += [answer(r[ids.shape[1]:].tolist()) for r in out]
        return got

    with torch.inference_mode():
        lm.generate(torch.tensor([prompts["type"][0]["tokens"]], device=model.device), **gen_kw)  # warm-up
        for name, tasks in (("type", ("type",)), ("type_and_status", ("type", "status"))):
            sec1, got = median_time(lambda: one_at_a_time(tasks), args.repeats)
            secb, _ = median_time(lambda: batched(tasks), args.repeats)
            res[f"generate_one_at_a_time_{name}"] = {"cells": ng, "seconds": round(sec1, 3),
                                                     "cells_per_s": round(ng / sec1, 1)}
            res[f"generate_batched_{name}"] = {"cells": ng, "seconds": round(secb, 3), "cells_per_s": round(ng / secb, 1)}
            one = res[f"one_pass_{name}"]["cells_per_s"]
            res[f"speedup_{name}_vs_generate_one_at_a_time"] = round(one / (ng / sec1), 1)
            res[f"speedup_{name}_vs_generate_batched"] = round(one / (ng / secb), 1)
    res["agreement_generate_vs_one_pass_argmax"] = round(
        float(np.mean([a == b for a, b in zip(got["type"], pred.cells["cell_type"].head(ng))])), 4)
    res["generate_answers_outside_label_set"] = int(sum(a is None for a in got["type"] + got["status"]))
    res["_cell_types"] = pred.cells["cell_type"].tolist()
    return res


def plot(results: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [("one_pass", "one-pass"), ("generate_batched", "generate, batched"),
               ("generate_one_at_a_time", "generate, one at a time")]
    methods = [(m, lab) for m, lab in methods if all(f"{m}_type" in r for r in results)]  # (v2: no generate)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, (task, title) in zip(axes, (("type", "cell type"), ("type_and_status", "cell type + clinical status"))):
        x = np.arange(len(methods))
        w = 0.8 / len(results)
        for k, r in enumerate(results):
            vals = [r[f"{m}_{task}"]["cells_per_s"] for m, _ in methods]
            bars = ax.bar(x + k * w, vals, w, label=r["dtype"])
            ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xticks(x + w * (len(results) - 1) / 2, [lab for _, lab in methods], fontsize=8)
        ax.set_title(title)
    axes[0].set_ylabel("cells per second (" + device + ")")
    axes[0].legend()
    fig.suptitle(f"default model on {device}: one-pass constrained scoring"
                 + (" vs model.generate" if len(methods) > 1 else " (generate not comparable)"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    ap.add_argument("--cells", default=None, help="cells CSV (default: simulate 3 held-out-donor images)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--n-cells", type=int, default=3000)
    ap.add_argument("--n-generate", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=None, help="prompts per pass (default: the predict default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from spatial2sentence.predict import PREDICT_BATCH_SIZE

    args.batch_size = args.batch_size or PREDICT_BATCH_SIZE
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: this torch sees no CUDA device (CPU-only build or no GPU)")
    torch.set_num_threads(args.threads)
    df = pd.read_csv(args.cells) if args.cells else simulated_cells()
    # one image's worth of cells per run keeps the pairs realistic; take whole images up to n-cells
    if "image" in df.columns:
        keep, tot = [], 0
        for _, g in df.groupby("image", sort=False):
            keep.append(g)
            tot += len(g)
            if tot >= args.n_cells:
                break
        df = pd.concat(keep).head(args.n_cells)
    results = [measure_dtype(args, df, d) for d in args.dtypes.split(",")]
    types = {r["dtype"]: r.pop("_cell_types") for r in results}
    if "float32" in types and "bfloat16" in types:
        results[-1]["agreement_with_float32_one_pass"] = round(
            float(np.mean(np.asarray(types["float32"]) == np.asarray(types["bfloat16"]))), 4)
    res = {
        "model": str(args.model or "default"),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "torch_threads": torch.get_num_threads(),
        "cells": len(df),
        "data": "cells table given" if args.cells else "3 semi-synthetic images of held-out donors (s2s simulate seed 0)",
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "results": results,
        "machine": {"cpus": os.cpu_count(), "cpu_bf16_units": cpu_bf16_units(), "python": platform.python_version(),
                    "torch": torch.__version__,
                    "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()]},
        "note": "median wall clock; one-pass includes pairs + prompt building, generate timings do not",
    }
    where = res["device"] if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{len(df)} cells, {where}, CPU bf16 units: {cpu_bf16_units() or 'none'}")
    print(f"{'dtype':9} {'answer':16} {'one-pass':>9} {'gen batch':>10} {'gen 1-by-1':>11} {'x batch':>8} {'x 1-by-1':>9}")
    for r in results:
        for task in ("type", "type_and_status"):
            if not r["generate_comparable"]:
                print(f"{r['dtype']:9} {task:16} {r[f'one_pass_{task}']['cells_per_s']:9.0f}   (generate: not "
                      "comparable, the model's words carry values or its lines share positions)")
                continue
            print(f"{r['dtype']:9} {task:16} {r[f'one_pass_{task}']['cells_per_s']:9.0f} "
                  f"{r[f'generate_batched_{task}']['cells_per_s']:10.0f} "
                  f"{r[f'generate_one_at_a_time_{task}']['cells_per_s']:11.0f} "
                  f"{r[f'speedup_{task}_vs_generate_batched']:8.1f} {r[f'speedup_{task}_vs_generate_one_at_a_time']:9.1f}")
        print(f"  {r['dtype']}: one-pass through the plain forward (no last-layer shortcut): "
              f"{r['one_pass_plain_forward_type']['cells_per_s']:.0f} / "
              f"{r['one_pass_plain_forward_type_and_status']['cells_per_s']:.0f} cells/s "
              f"(shortcut used: {r['answer_position_shortcut_used']})")
        extra = f", one-pass vs float32: {r['agreement_with_float32_one_pass']:.3f}" if "agreement_with_float32_one_pass" in r else ""
        if not r["generate_comparable"]:
            print(f"  {r['dtype']}: {extra[2:] or 'no generate comparison'}")
            continue
        print(f"  {r['dtype']}: same cell types (generate vs one-pass): "
              f"{r['agreement_generate_vs_one_pass_argmax']:.3f}{extra}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "inference" if args.device == "cpu" else "inference_cuda"
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    where = f"{args.threads} CPU threads" if args.device == "cpu" else res["device"]
    plot(results, RESULTS / f"{stem}.png", where)
    print(f"saved {RESULTS / stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
