"""Rebuild this sample: one semi-synthetic islet crop of the full Damond panel.

    s2s simulate --layouts ../shared/data/damond_diabetes_layouts/cells.csv.gz --out /tmp/s2s_sim --images R13
    python sample_data/simulated_islet/make_sample.py /tmp/s2s_sim

Takes the simulated image R13 (a real Non-diabetic layout of Damond et al. 2019), finds the densest
cluster of islet endocrine cells (alpha, beta, delta, gamma) and writes a CROP x CROP px crop around it:
``ome/R13_islet.ome.tiff`` (uint16 counts, zlib, marker names in the OME-XML, 1 um / px),
``masks/R13_islet.tiff``, ``labels.csv`` (true types of the cells in the crop, with their mask ids),
``panel.csv``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

IMAGE, CROP = "R13", 256
ENDOCRINE = {"alpha", "beta", "delta", "gamma"}


def main(sim_dir: str, out: Path = Path(__file__).resolve().parent) -> None:
    from spatial2sentence.io import read_image, read_mask, write_csv_atomic, write_tiff_atomic

    sim = Path(sim_dir)
    image = read_image(sim / "ome" / f"{IMAGE}.ome.tiff")
    mask = read_mask(sim / "masks" / f"{IMAGE}.tiff", image.shape)
    labels = pd.read_csv(sim / "labels.csv")
    labels = labels[labels["image"] == IMAGE]
    # centroids of the endocrine cells from the mask
    ids = labels.loc[labels["cell_type"].isin(ENDOCRINE), "Object"].to_numpy()
    yy, xx = np.nonzero(np.isin(mask, ids))
    h, w = mask.shape
    # the crop window holding the most endocrine pixels (coarse grid search)
    best, pos = -1, (0, 0)
    for y0 in range(0, max(1, h - CROP + 1), 16):
        for x0 in range(0, max(1, w - CROP + 1), 16):
            n = int(np.sum((yy >= y0) & (yy < y0 + CROP) & (xx >= x0) & (xx < x0 + CROP)))
            if n > best:
                best, pos = n, (y0, x0)
    y0, x0 = pos
    crop = image.data[:, y0:y0 + CROP, x0:x0 + CROP]
    mcrop = mask[y0:y0 + CROP, x0:x0 + CROP]
    assert np.array_equal(crop, np.round(crop)) and crop.max() < 65536
    name = f"{IMAGE}_islet"
    (out / "ome").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    write_tiff_atomic(out / "ome" / f"{name}.ome.tiff", crop.astype(np.uint16), channel_names=image.channels,
                      ome=True, compression="zlib")
    write_tiff_atomic(out / "masks" / f"{name}.tiff", mcrop.astype(np.uint16), compression="zlib")
    present = np.unique(mcrop[mcrop > 0])
    lab = labels[labels["Object"].isin(present)].assign(image=name, crop_y0=y0, crop_x0=x0)
    write_csv_atomic(lab, out / "labels.csv")
    panel = pd.read_csv(sim / "panel.csv")
    write_csv_atomic(panel, out / "panel.csv")
    print(f"{name}: crop y0={y0} x0={x0} {CROP}x{CROP} px, {len(present)} cells, "
          f"{lab['cell_type'].value_counts().to_dict()}")


if __name__ == "__main__":
    main(sys.argv[1])
