"""Check two `s2s annotate` output folders of the same input (in-process and --workers 2), run with
the Python of the fresh wheel-only virtual environment: every promised file exists and reads, and both
runs wrote the same bytes (run.json and the done/ records name timings, workers and paths; cells.h5ad
is compared by content, since HDF5 files are not byte-stable)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import tifffile
from PIL import Image

sample, out_a, out_b = (Path(p) for p in sys.argv[1:4])
repo = Path(sys.argv[4]) if len(sys.argv) > 4 else None
images = sorted(p.stem for p in (sample / "img").glob("*.tiff"))
assert images, sample
EXPECTED = ({f"cells/{i}.csv" for i in images} | {f"types/{i}.tiff" for i in images}
            | {f"overlays/{i}.png" for i in images} | {f"done/{i}.json" for i in images}
            | {"summary.csv", "cells.h5ad", "errors.csv", "run.json"})
NOT_BYTES = {"run.json", "cells.h5ad", ".s2s.lock"}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check(root: Path) -> None:
    have = set(files(root))
    missing = EXPECTED - have
    assert not missing, f"{root}: missing {sorted(missing)}"
    assert pd.read_csv(root / "errors.csv").empty, (root / "errors.csv").read_text()
    summary = pd.read_csv(root / "summary.csv")
    assert sorted(summary["image"].astype(str)) == images, summary
    n = 0
    for i in images:
        cells = pd.read_csv(root / "cells" / f"{i}.csv")
        mask = tifffile.imread(sample / "masks" / f"{i}.tiff")
        assert sorted(cells["Object"]) == sorted(set(np.unique(mask)) - {0}), i
        # a cell with no marker present is "unknown" with no probability (no_signal); every other has one
        signal = ~cells["no_signal"].astype(bool) if "no_signal" in cells.columns else np.ones(len(cells), bool)
        assert cells["cell_type"].notna().all(), i
        assert cells.loc[signal, "cell_type_probability"].between(0, 1).all(), i
        assert (cells.loc[~signal, "cell_type"] == "unknown").all(), i
        types = tifffile.imread(root / "types" / f"{i}.tiff")
        assert types.shape == mask.shape and ((types > 0) == (mask > 0)).all(), i
        with Image.open(root / "overlays" / f"{i}.png") as png:
            assert png.size[0] >= mask.shape[1] and png.size[1] >= mask.shape[0], (i, png.size)
        done = json.loads((root / "done" / f"{i}.json").read_text())
        assert done["cells"] == len(cells), i
        n += len(cells)
    adata = ad.read_h5ad(root / "cells.h5ad")
    assert adata.n_obs == n and "cell_type" in adata.obs, adata
    run = json.loads((root / "run.json").read_text())
    assert run, root
    print(f"{root.name}: {len(images)} images, {n} cells, {len(have)} files")


def shipped(src: Path, installed: Path) -> None:
    """Every data file of the checkout is in the installed package (training checkpoints excepted)."""
    want = {str(p.relative_to(src)) for p in src.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and "checkpoint" not in p.parts}
    have = {str(p.relative_to(installed)) for p in installed.rglob("*") if p.is_file()}
    assert want <= have, f"not in the wheel: {sorted(want - have)}"


if repo is not None:
    import spatial2sentence

    shipped(repo / "src" / "spatial2sentence" / "data", Path(spatial2sentence.__file__).parent / "data")
    shipped(repo / "sample_data", sample.parent)
    print("the wheel holds every file of src/spatial2sentence/data and sample_data")
check(out_a)
check(out_b)
fa, fb = files(out_a), files(out_b)
assert set(fa) == set(fb), set(fa) ^ set(fb)
differ = [k for k in fa if fa[k] != fb[k] and k not in NOT_BYTES and not k.startswith("done/")]
assert not differ, f"in-process and --workers 2 outputs differ: {differ}"
ha, hb = ad.read_h5ad(out_a / "cells.h5ad"), ad.read_h5ad(out_b / "cells.h5ad")
pd.testing.assert_frame_equal(ha.obs, hb.obs)
pd.testing.assert_frame_equal(ha.var, hb.var)
np.testing.assert_array_equal(np.asarray(ha.X), np.asarray(hb.X))
same_h5 = fa["cells.h5ad"] == fb["cells.h5ad"]
print(f"in-process == --workers 2: {len(fa) - len(NOT_BYTES & set(fa)) - len(images)} files byte-identical, "
      f"cells.h5ad equal in content (bytes {'identical' if same_h5 else 'differ'}); run.json and done/ not compared")
