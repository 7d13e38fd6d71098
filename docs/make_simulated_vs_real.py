"""docs/simulated_vs_real.png: a real Damond 2019 IMC crop beside a semi-synthetic one.

Left: the real toy image G01 (Damond et al. 2019, via cytomapper; non-diabetic donor 6126... see
../shared/data/README.md). Right: a 100x100 px crop around an islet of a simulated image
(real layout, simulated pixels) of the same stage. Both in the five shared channels (H3, CD99, PIN,
CD8a, CDH), each channel scaled to its own 99th percentile, composites as in cytomapper:
PIN red, CD99 green, H3 blue (top) and CDH white + CD8a magenta (bottom).

    python docs/make_simulated_vs_real.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TOY = DATA / "damond_pancreas_toy"
LAYOUTS = DATA / "damond_diabetes_layouts" / "cells.csv.gz"
OUT = REPO / "docs" / "simulated_vs_real.png"
CHANNELS = ["H3", "CD99", "PIN", "CD8a", "CDH"]
REAL_IMAGE = "G01"
SIM_IMAGE = "S35"  # a non-diabetic layout image with many beta cells


def _norm(ch):
    hi = np.percentile(ch, 99)
    return np.clip(ch / hi, 0, 1) if hi > 0 else ch * 0


def composites(img, names):
    c = {n: _norm(img[names.index(n)]) for n in CHANNELS}
    top = np.dstack([c["PIN"], c["CD99"], c["H3"]])
    bottom = np.clip(np.dstack([c["CDH"] + c["CD8a"], c["CDH"], c["CDH"] + c["CD8a"]]), 0, 1)
    return top, bottom


def outlines(mask):
    b = np.zeros(mask.shape, bool)
    b[1:] |= mask[1:] != mask[:-1]
    b[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    return b & (mask > 0)


def main():
    from spatial2sentence.bench.simulate import simulate_dataset

    real = tifffile.imread(TOY / "img" / f"{REAL_IMAGE}.tiff")
    real_mask = tifffile.imread(TOY / "masks" / f"{REAL_IMAGE}.tiff")
    real_names = pd.read_csv(TOY / "panel.csv")["name"].tolist()
    real_lab = pd.read_csv(TOY / "labels.csv")
    stage = real_lab.loc[real_lab["image"] == REAL_IMAGE, "stage"].iloc[0]

    with tempfile.TemporaryDirectory() as tmp:
        simulate_dataset(LAYOUTS, tmp, images=[SIM_IMAGE], seed=0)
        sim = tifffile.imread(Path(tmp) / "img" / f"{SIM_IMAGE}.tiff")
        sim_mask = tifffile.imread(Path(tmp) / "masks" / f"{SIM_IMAGE}.tiff")
        sim_names = pd.read_csv(Path(tmp) / "panel.csv")["name"].tolist()
        lab = pd.read_csv(Path(tmp) / "labels.csv")
    # 100x100 crop centred on the densest beta-cell area of the simulated image
    lay = pd.read_csv(LAYOUTS)
    lay = lay[lay["imageID"] == SIM_IMAGE]
    beta = lay[lay["cellType"] == "beta"][["x", "y"]].to_numpy()
    cy, cx = np.median(beta[:, 1]), np.median(beta[:, 0])
    y0 = int(np.clip(cy - 50, 0, sim.shape[1] - 100))
    x0 = int(np.clip(cx - 50, 0, sim.shape[2] - 100))
    sim, sim_mask = sim[:, y0:y0 + 100, x0:x0 + 100], sim_mask[y0:y0 + 100, x0:x0 + 100]
    sim_stage = lab["stage"].iloc[0]

    fig, axes = plt.subplots(2, 2, figsize=(9, 9.4))
    for col, (img, mask, names, title) in enumerate([
        (real, real_mask, real_names, f"real IMC: Damond 2019 {REAL_IMAGE} ({stage})"),
        (sim, sim_mask, sim_names, f"semi-synthetic: layout {SIM_IMAGE} ({sim_stage}), seed 0"),
    ]):
        top, bottom = composites(img, names)
        ol = outlines(mask)
        for row, rgb in enumerate((top, bottom)):
            show = rgb.copy()
            show[ol] = 0.5 * show[ol] + 0.5 * np.array([1.0, 1.0, 0.0])
            ax = axes[row, col]
            ax.imshow(show, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=10)
        axes[0, 0].set_ylabel("PIN (red), CD99 (green), H3 (blue)")
        axes[1, 0].set_ylabel("CDH (white), CD8a (magenta)")
    fig.suptitle("100 x 100 um, 1 px = 1 um; mask outlines in yellow; each channel scaled to its 99th "
                 "percentile", fontsize=9)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"saved {OUT}")


if __name__ == "__main__":
    main()
