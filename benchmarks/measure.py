"""Benchmark: per-cell measurement of a large generated IMC-like image, ours against the alternatives.

A 2000 x 2000 px, 40-channel float32 image with about 20,000 cells (Voronoi cells of random seeds,
limited to 9 px around each seed) is measured by
  - spatial2sentence.measure.measure_cells (bincount, one pass per channel),
  - skimage.measure.regionprops_table (label, area, centroid, intensity_mean),
  - scipy.ndimage per channel (mean) plus ndimage.center_of_mass and sum for centroid and area,
in the same run, and the results are checked to agree. Peak memory of our measurement is traced with
tracemalloc (numpy reports its allocations there) and compared with the image's size.

Usage: python benchmarks/measure.py [--size 2000] [--channels 40] [--cells 20000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import regionprops_table

from spatial2sentence.measure import measure_cells


def make_image(size: int, channels: int, cells: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    seeds = rng.random((cells, 2)) * size
    yy, xx = np.mgrid[0:size, 0:size]
    dist, owner = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]), workers=-1)
    mask = np.where(dist < 9.0, owner + 1, 0).reshape(size, size).astype(np.uint16 if cells < 65535 else np.uint32)
    data = rng.gamma(1.5, 2.0, size=(channels, size, size)).astype(np.float32)
    return data, mask


def timed(fn, repeat=1):
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def ndimage_measure(data, mask):
    ids = np.unique(mask)
    ids = ids[ids > 0]
    means = [ndimage.mean(data[c], mask, ids) for c in range(data.shape[0])]
    centroids = ndimage.center_of_mass(np.ones(mask.shape, np.float32), mask, ids)
    area = ndimage.sum_labels(np.ones(mask.shape, np.float32), mask, ids)
    return ids, np.array(means).T, np.array(centroids), area


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--channels", type=int, default=40)
    parser.add_argument("--cells", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    data, mask = make_image(args.size, args.channels, args.cells)
    n_cells = len(np.unique(mask)) - 1
    print(f"image {data.shape} float32 ({data.nbytes / 1e6:.0f} MB), {n_cells} cells")

    t_ours, ours = timed(lambda: measure_cells(data, mask), repeat=3)
    tracemalloc.start()
    measure_cells(data, mask)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Best of 3 for every method: the machine may be shared, and the best run is the least disturbed.
    t_nd, (ids, nd_means, nd_centroids, nd_area) = timed(lambda: ndimage_measure(data, mask), repeat=3)
    t_rp, rp = timed(
        lambda: regionprops_table(
            mask, np.moveaxis(data, 0, -1), properties=("label", "area", "centroid", "intensity_mean")
        ),
        repeat=3,
    )

    markers = ours.columns[4:]
    assert (ours["Object"].to_numpy() == ids).all() and (rp["label"] == ids).all()
    assert np.allclose(ours[markers].to_numpy(), nd_means, rtol=1e-5)
    assert np.allclose(ours[markers].to_numpy(), np.column_stack([rp[f"intensity_mean-{c}"] for c in range(args.channels)]), rtol=1e-5)
    assert np.allclose(ours[["y", "x"]].to_numpy(), nd_centroids) and np.allclose(ours["area"], nd_area)

    results = {
        "image_shape": list(data.shape),
        "image_mb": data.nbytes / 1e6,
        "cells": n_cells,
        "seconds": {"spatial2sentence": t_ours, "scipy.ndimage": t_nd, "skimage.regionprops_table": t_rp},
        "speedup_vs_regionprops": t_rp / t_ours,
        "speedup_vs_ndimage": t_nd / t_ours,
        "peak_extra_memory_mb": peak / 1e6,
        "peak_total_over_image": (data.nbytes + peak) / data.nbytes,
        "cpus": os.cpu_count(),
        "load_average_1_5_15min_at_end": list(os.getloadavg()),
    }
    print(f"{'method':<28}{'seconds':>10}{'x slower than ours':>20}")
    for name, seconds in results["seconds"].items():
        print(f"{name:<28}{seconds:>10.2f}{seconds / t_ours:>20.1f}")
    print(f"peak memory of ours: image {data.nbytes / 1e6:.0f} MB + {peak / 1e6:.0f} MB allocated "
          f"= {results['peak_total_over_image']:.2f} x the image")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "measure.json").write_text(json.dumps(results, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        names = list(results["seconds"])
        ax.barh(names, [results["seconds"][n] for n in names], color=["#2a9d8f", "#e9c46a", "#e76f51"])
        ax.set_xlabel("seconds (lower is better)")
        ax.set_title(f"{args.size}x{args.size} px, {args.channels} channels, {n_cells} cells")
        fig.tight_layout()
        fig.savefig(args.out / "measure.png", dpi=120)
    except ImportError:
        pass
    print(f"saved {args.out / 'measure.json'}")


if __name__ == "__main__":
    main()
