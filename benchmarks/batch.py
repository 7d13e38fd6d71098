"""Benchmark: batch annotation of the simulated Damond images, in-process against a 2-worker Dask cluster.

The images are SEMI-SYNTHETIC: the real cell layouts of Damond et al. 2019 (120 images, 253,777 cells)
rendered by ``s2s simulate`` (seed 0) into a steinbock folder. The same folder is annotated twice with
:func:`spatial2sentence.batch.run_batch`, into fresh output folders:

  1. in-process (``s2s annotate DIR -o OUT --threads T``; T = 1 by default, so one core);
  2. ``--workers 2``: a ``distributed.LocalCluster`` of 2 processes x 1 thread (torch 1 thread each).

For each: images per minute and cells per second over the annotation phase (from the first image to
the last: reading, measuring, model load, prediction, writing; for the cluster also its start-up), and
the CPU time used (this process and the cluster's worker processes: a figure that other jobs on a
shared machine do not distort), the total time including discovery and the run-level files
(summary.csv, cells.h5ad), the time to the
first finished image (start-up) and the steady-state rate from the first to the last image. The per-image
outputs of the two runs are compared byte for byte (they must be identical). The GPU is used when
one is present (``--device auto``); the JSON says which device ran.

Usage: python benchmarks/batch.py [--data DIR] [--n-images N] [--model M] [--device auto] [--threads 1]
                                  [--workers 2] [--work /tmp/s2s_batch_bench] [--out benchmarks/results]
``--data`` defaults to WORK/sim (rendered there when missing, all 120 images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = Path(os.environ.get("S2S_DATA", REPO.parent / "shared" / "data")) / "damond_diabetes_layouts" / "cells.csv.gz"


def subset(src: Path, dst: Path, n: int) -> Path:
    """A steinbock folder holding the first ``n`` images of ``src`` (symlinks, inputs untouched)."""
    import pandas as pd

    names = sorted(p.name for p in (src / "img").iterdir() if p.suffix == ".tiff")[:n]
    if dst.exists():
        shutil.rmtree(dst)
    for sub in ("img", "masks"):
        (dst / sub).mkdir(parents=True)
        for name in names:
            (dst / sub / name).symlink_to((src / sub / name).resolve())
    shutil.copy(src / "panel.csv", dst / "panel.csv")
    if (src / "images.csv").exists():
        t = pd.read_csv(src / "images.csv")
        t[t["image"].isin(names)].to_csv(dst / "images.csv", index=False)
    return dst


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the cluster's worker processes once closed)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def outputs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.parent.name in ("cells", "types", "overlays")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--n-images", type=int, default=None, help="first N images (default: all)")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded default model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the in-process run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/s2s_batch_bench"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--note", default="", help="free text stored in the JSON")
    args = parser.parse_args()

    import torch

    from spatial2sentence.batch import model_meta, run_batch, versions

    data = args.data or args.work / "sim"
    if not (data / "img").is_dir():
        from spatial2sentence.bench.simulate import simulate_dataset

        print(f"rendering the semi-synthetic images into {data} ...", flush=True)
        simulate_dataset(LAYOUTS, data, seed=0, workers=os.cpu_count() or 1)
    n_all = len(list((data / "img").glob("*.tiff")))
    if args.n_images and args.n_images < n_all:
        data = subset(data, args.work / f"sim_first{args.n_images}", args.n_images)
    meta = model_meta(args.model)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None

    results = {}
    configs = [("in-process", dict(workers=0, threads=args.threads)),
               (f"LocalCluster {args.workers} workers", dict(workers=args.workers))]
    for label, kw in configs:
        out = args.work / ("out_" + label.split()[0].lower())
        if out.exists():
            shutil.rmtree(out)
        load0 = os.getloadavg()
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        stamps = []
        def stamp(rec, done, n):  # returns None: a progress callback returning False stops the run
            if rec is not None:
                stamps.append(time.perf_counter())

        res = run_batch(data, out, model=args.model, device=args.device, **kw, progress=stamp)
        total = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        # steady state: from the first finished image to the last (no start-up, no model load)
        steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) * 60 if len(stamps) > 2 else None
        run = res.run
        if run["images"]["annotated"] == 0:
            raise SystemExit(f"{label}: no image annotated ({run['images']}); see {out / 'errors.csv'}")
        tim = run["timings"]
        results[label] = {
            "mode": run["settings"]["mode"],
            "scoring_threads": run["settings"]["scoring_threads"],  # torch threads per scoring worker
            "images": run["images"]["annotated"],
            "failed": run["images"]["failed"],
            "cells": tim["annotated_cells"],
            "annotate_s": tim["annotate_s"],
            "total_s": round(total, 2),
            "images_per_minute": tim["images_per_minute"],
            "cells_per_second": tim["cells_per_second"],
            "per_image_s_sum": tim["per_image_s_sum"],
            "first_image_after_s": round(stamps[0] - t0, 2) if stamps else None,
            "steady_state_images_per_minute": round(steady, 3) if steady else None,
            "cpu_s": round(cpu, 1),
            "cells_per_cpu_second": round(tim["annotated_cells"] / cpu, 1) if cpu > 0 else None,
            "load_average_before": [round(x, 2) for x in load0],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "device": json.loads((next((out / "done").glob("*.json"))).read_text())["device"],
        }
        print(f"{label}: {results[label]['images']} images, {results[label]['cells']} cells in "
              f"{tim['annotate_s']:.1f} s -> {tim['images_per_minute']:.2f} images/min, "
              f"{tim['cells_per_second']:.0f} cells/s (total with summary + h5ad {total:.1f} s)", flush=True)

    outs = [args.work / ("out_" + label.split()[0].lower()) for label, _ in configs]
    identical = outputs(outs[0]) == outputs(outs[1])
    single, cluster = results[configs[0][0]], results[configs[1][0]]
    speedup = cluster["cells_per_second"] / single["cells_per_second"]
    report = {
        "benchmark": "batch annotation (s2s annotate / spatial2sentence.batch.run_batch)",
        "data": f"semi-synthetic: real Damond 2019 layouts rendered by s2s simulate (seed 0); {data}",
        "n_images": single["images"],
        "model": {k: meta[k] for k in ("path", "default", "fingerprint", "name")},
        "device_requested": args.device,
        "gpu": gpu or "none (no GPU on this machine)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "note": "2 CPU cores shared with other jobs: load averages are recorded per run"},
        "versions": versions(),
        "results": results,
        "speedup_cells_per_second": round(speedup, 3),
        "per_image_outputs_identical": identical,
        "note": args.note,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "batch.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"{'':24s} {'images/min':>11s} {'cells/s':>9s} {'annotate s':>11s} {'total s':>8s} "
          f"{'1st image s':>12s} {'steady img/min':>15s} {'cells/CPU-s':>12s}")
    for label, r in results.items():
        st = r["steady_state_images_per_minute"]
        print(f"{label:24s} {r['images_per_minute']:11.2f} {r['cells_per_second']:9.0f} {r['annotate_s']:11.1f} "
              f"{r['total_s']:8.1f} {r['first_image_after_s']:12.1f} {st if st is None else round(st, 2)!s:>15s} "
              f"{r['cells_per_cpu_second']!s:>12s}")
    print(f"speed-up {speedup:.2f}x; per-image outputs identical: {identical}; GPU: {report['gpu']}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
