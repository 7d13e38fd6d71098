"""Rebuild tests/data/ from the full datasets (run once by hand; the tests never download anything).

    python tests/data/make_test_data.py [--src $S2S_DATA]   (default: ../shared/data beside the repo)

Copies the files the tests read, unchanged, except two subsets (see tests/data/README.md):
the Damond layouts keep the rows of the 8 images the tests render, and scimap's .h5ad keeps its cell
table (obs), marker names (var) and uns without the expression matrix (the tests read only obs).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

IMC_STEINBOCK = ["panel.csv", "images.csv", "img", "masks", "masks_deepcell", "intensities_deepcell",
                 "regionprops_deepcell", "ome/20210305_NE_mockData1_001.ome.tiff"]
TOY = ["LICENSE.md", "panel.csv", "labels.csv", "original_cells_table.csv", "img", "masks"]
# test_batch renders the first 4 images (sorted ids), test_simulate C29, H33, S18, S35, test_model
# reads the first 6,000 rows (A09, A11, A16).
LAYOUT_IMAGES = ["A09", "A11", "A16", "A17", "C29", "H33", "S18", "S35"]


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copyfile(src, dst)
    for p in [dst, *dst.rglob("*")] if dst.is_dir() else [dst]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def main() -> None:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=os.environ.get("S2S_DATA", str(REPO.parent / "shared" / "data")))
    src = Path(ap.parse_args().src)

    imc = src / "imc_testdata"
    _copy(imc / "LICENSE", HERE / "imc_testdata" / "LICENSE")
    for name in IMC_STEINBOCK:
        _copy(imc / "steinbock" / name, HERE / "imc_testdata" / "steinbock" / name)
    for f in sorted((imc / "raw").glob("*/*")):
        if f.suffix in (".mcd", ".txt"):  # the .schema XML files are not read
            _copy(f, HERE / "imc_testdata" / "raw" / f.parent.name / f.name)

    for name in TOY:
        _copy(src / "damond_pancreas_toy" / name, HERE / "damond_pancreas_toy" / name)

    lay_dir = HERE / "damond_diabetes_layouts"
    _copy(src / "damond_diabetes_layouts" / "LICENSE.md", lay_dir / "LICENSE.md")
    lay = pd.read_csv(src / "damond_diabetes_layouts" / "cells.csv.gz")
    lay = lay[lay["imageID"].isin(LAYOUT_IMAGES)]  # original row order kept
    lay.to_csv(lay_dir / "cells.csv.gz", index=False, compression={"method": "gzip", "mtime": 0})

    import anndata as ad

    sc = HERE / "scimap_cycif"
    for name in ("LICENSE", "example_data.csv"):
        _copy(src / "scimap_cycif" / name, sc / name)
    full = ad.read_h5ad(src / "scimap_cycif" / "example_data.h5ad")
    ad.AnnData(obs=full.obs, var=full.var, uns=dict(full.uns)).write_h5ad(sc / "example_data.h5ad")


if __name__ == "__main__":
    main()
