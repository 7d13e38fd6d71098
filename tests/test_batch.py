"""Batch annotation (``spatial2sentence.batch``, ``s2s annotate``): input discovery, identical results
in-process and on a 2-worker Dask LocalCluster, resume after SIGKILL, bad inputs, the AnnData export.

Images are small semi-synthetic crops (80 x 80 um) of real Damond 2019 layouts rendered by the
simulator; the model is a tiny untrained one (random weights: the plumbing is tested, not accuracy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from spatial2sentence.batch import discover, run_batch
from spatial2sentence.errors import S2SInputError
from spatial2sentence.io import write_tiff_atomic

REPO = Path(__file__).resolve().parents[1]
from conftest import TEST_DATA as DATA  # noqa: E402
LAYOUTS = DATA / "damond_diabetes_layouts" / "cells.csv.gz"
RAW_MCD = DATA / "imc_testdata" / "raw" / "20210305_NE_mockData2" / "20210305_NE_mockData2.mcd"
STEINBOCK_MASKS = DATA / "imc_testdata" / "steinbock" / "masks"
N_IMAGES = 4
CROP_UM = 80


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def crops():
    """N_IMAGES rendered crops: (name, image CYX float32, mask uint16) and the panel table."""
    from spatial2sentence.bench.simulate import image_ids, load_layouts, load_panel, render_image

    layouts = load_layouts(LAYOUTS)
    ids = image_ids(layouts)
    out = []
    for i, name in enumerate(ids[:N_IMAGES]):
        cells = layouts[(layouts["imageID"] == name) & (layouts["x"] < CROP_UM) & (layouts["y"] < CROP_UM)]
        r = render_image(cells, i, seed=0)
        out.append((str(name), r.image, r.mask.astype(np.uint16)))
    return out, load_panel()


def write_panel(path: Path, panel: pd.DataFrame) -> None:
    panel.assign(keep=1)[["channel", "name", "keep"]].to_csv(path, index=False)


@pytest.fixture(scope="session")
def steinbock_dir(tmp_path_factory, crops):
    images, panel = crops
    root = tmp_path_factory.mktemp("steinbock")
    for name, img, mask in images:
        write_tiff_atomic(root / "img" / f"{name}.tiff", img)
        write_tiff_atomic(root / "masks" / f"{name}.tiff", mask)
    write_panel(root / "panel.csv", panel)
    return root


@pytest.fixture(scope="session")
def serial_run(tmp_path_factory, steinbock_dir, tiny_model):
    out = tmp_path_factory.mktemp("serial") / "out"
    result = run_batch(steinbock_dir, out, model=tiny_model, device="cpu")
    return out, result


def tree(root: Path, skip=("run.json", "cells.h5ad")) -> dict[str, bytes]:
    """Every output file's bytes, except the per-image done records (they hold timings) and run.json."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in skip and not rel.startswith("done/"):
            files[rel] = p.read_bytes()
    return files


def assert_same_h5ad(a: Path, b: Path) -> None:
    import anndata as ad

    x, y = ad.read_h5ad(a), ad.read_h5ad(b)
    np.testing.assert_array_equal(x.X, y.X)
    pd.testing.assert_frame_equal(x.obs, y.obs)
    np.testing.assert_array_equal(x.obsm["spatial"], y.obsm["spatial"])
    assert list(x.var_names) == list(y.var_names)
    assert list(x.uns["cell_type_colors"]) == list(y.uns["cell_type_colors"])


def hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ discovery
def test_discovery_of_the_three_layouts(tmp_path, steinbock_dir, crops):
    d = discover(steinbock_dir)
    assert d.kind == "steinbock" and [j.name for j in d.jobs] == [n for n, _, _ in crops[0]]
    assert all(j.mask_path and j.problem is None for j in d.jobs)

    # image folder: X_mask.tiff beside the image, else masks/X.tiff; *_mask files are not images
    (tmp_path / "pairs" / "masks").mkdir(parents=True)
    img = crops[0][0][1]
    write_tiff_atomic(tmp_path / "pairs" / "a.tiff", img)
    write_tiff_atomic(tmp_path / "pairs" / "a_mask.tiff", crops[0][0][2])
    write_tiff_atomic(tmp_path / "pairs" / "b.ome.tiff", img)
    write_tiff_atomic(tmp_path / "pairs" / "masks" / "b.tif", crops[0][0][2])
    write_tiff_atomic(tmp_path / "pairs" / "c.tif", img)
    d = discover(tmp_path / "pairs")
    assert d.kind == "images"
    jobs = {j.name: j for j in d.jobs}
    assert sorted(jobs) == ["a", "b", "c"]
    assert Path(jobs["a"].mask_path).name == "a_mask.tiff"
    assert Path(jobs["b"].mask_path) == tmp_path / "pairs" / "masks" / "b.tif"
    assert jobs["c"].mask_path is None and "no mask c_mask.tiff or masks/c.tiff" in jobs["c"].problem

    # MCD folder: acquisition 3 of F.mcd is F_003 with its mask at masks/F_003.tiff
    (tmp_path / "mcd" / "masks").mkdir(parents=True)
    shutil.copy(RAW_MCD, tmp_path / "mcd")
    for acq in (1, 2):
        shutil.copy(STEINBOCK_MASKS / f"20210305_NE_mockData2_00{acq}.tiff", tmp_path / "mcd" / "masks")
    d = discover(tmp_path / "mcd")
    assert d.kind == "mcd"
    assert [(j.name, j.acquisition) for j in d.jobs] == [
        ("20210305_NE_mockData2_001", 1), ("20210305_NE_mockData2_002", 2), ("20210305_NE_mockData2_003", 3)]
    assert d.jobs[2].mask_path is None and "masks/20210305_NE_mockData2_003.tiff" in d.jobs[2].problem


def test_mcd_folder_end_to_end(tmp_path, tiny_model):
    """Real .mcd acquisitions with steinbock's masks; the acquisition without a mask is an error.
    (The panel renames the 5 test channels to Damond markers only so the tiny model reads them.)"""
    from spatial2sentence.cli import main
    from click.testing import CliRunner

    src = tmp_path / "mcd"
    (src / "masks").mkdir(parents=True)
    shutil.copy(RAW_MCD, src)
    for acq in (1, 2):
        shutil.copy(STEINBOCK_MASKS / f"20210305_NE_mockData2_00{acq}.tiff", src / "masks")
    (src / "panel.csv").write_text(
        "channel,name,keep\nAg107,SMA,1\nPr141,KRT19,1\nSm147,CD44,1\nEu153,PDX1,1\nYb172,H3,1\n")
    res = CliRunner().invoke(main, ["annotate", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_model),
                                    "--device", "cpu"])
    assert res.exit_code == 1, res.output
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert errors["image"].tolist() == ["20210305_NE_mockData2_003"]
    assert "no mask masks/20210305_NE_mockData2_003.tiff" in errors["reason"][0]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary["image"].tolist() == ["20210305_NE_mockData2_001", "20210305_NE_mockData2_002"]
    cells = pd.read_csv(tmp_path / "out" / "cells" / "20210305_NE_mockData2_001.csv")
    mask = tifffile.imread(STEINBOCK_MASKS / "20210305_NE_mockData2_001.tiff")
    assert cells["Object"].tolist() == sorted(set(np.unique(mask)) - {0})
    assert {"SMA", "KRT19", "CD44", "PDX1", "H3", "cell_type", "p_beta"} <= set(cells.columns)


# ------------------------------------------------------------------------------------------ outputs
def test_outputs_of_a_run(serial_run, crops, tiny_model):
    out, result = serial_run
    assert result.ok and len(result.records) == N_IMAGES
    meta = json.loads((tiny_model / "s2s_config.json").read_text())
    types = meta["type_labels"]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["image"]) == [n for n, _, _ in crops[0]]
    for (name, img, mask), row in zip(crops[0], summary.itertuples()):
        cells = pd.read_csv(out / "cells" / f"{name}.csv")
        assert row.cells == len(cells) == len(np.unique(mask)) - 1
        assert list(cells.columns[:4]) == ["Object", "x", "y", "area"]
        assert {"cell_type", "cell_type_probability", *(f"p_{t}" for t in types)} <= set(cells.columns)
        np.testing.assert_allclose(cells[[f"p_{t}" for t in types]].sum(1), 1, atol=1e-5)
        counts = cells["cell_type"].value_counts()
        assert all(getattr(row, f"n_{t}") == counts.get(t, 0) for t in types)
        # class-ID mask: background 0, each cell's pixels = index of its type + 1
        tmask = tifffile.imread(out / "types" / f"{name}.tiff")
        assert tmask.shape == mask.shape and tmask.dtype == np.uint8
        assert not tmask[mask == 0].any()
        code = dict(zip(cells["Object"], [types.index(t) + 1 for t in cells["cell_type"]]))
        ys, xs = np.nonzero(mask)
        assert all(tmask[y, x] == code[mask[y, x]] for y, x in zip(ys[::37], xs[::37]))
        from PIL import Image

        with Image.open(out / "overlays" / f"{name}.png") as png:
            assert png.mode == "RGB" and png.height >= mask.shape[0] and png.width > mask.shape[1]
    # the image's status call and whether it is confident, as `s2s predict` reports them
    from spatial2sentence.domain import status_is_confident

    assert summary["status_confident"].isin([True, False]).all()
    for name, row in zip([n for n, _, _ in crops[0]], summary.itertuples()):
        rec = json.loads((out / "done" / f"{name}.json").read_text())
        assert row.status == rec["status"] and row.status_confident == rec["status_confident"]
        assert row.status_confident == status_is_confident(row.status_probability, len(meta["status_labels"]))
    assert pd.read_csv(out / "errors.csv").empty
    run = json.loads((out / "run.json").read_text())
    assert run["images"]["annotated"] == N_IMAGES and run["model"]["type_labels"] == types
    assert run["versions"]["torch"] and run["timings"]["cells_per_second"] > 0
    assert not list(out.rglob("*.part"))


def test_h5ad_predictions_equal_the_csvs(serial_run, tiny_model):
    import anndata as ad

    out, _ = serial_run
    adata = ad.read_h5ad(out / "cells.h5ad")
    csvs = [pd.read_csv(p).assign(image=p.stem) for p in sorted((out / "cells").glob("*.csv"))]
    summary = pd.read_csv(out / "summary.csv")
    csv = pd.concat([csvs[[c.image.iloc[0] for c in csvs].index(n)] for n in summary["image"]], ignore_index=True)
    assert adata.n_obs == len(csv) == summary["cells"].sum()
    obs = adata.obs.reset_index(drop=True)
    assert obs["image"].astype(str).tolist() == csv["image"].tolist()
    assert obs["Object"].tolist() == csv["Object"].tolist()
    pcols = [c for c in csv.columns if c.startswith("p_") or c.endswith("_probability")]
    assert len(pcols) >= 16 + 3 + 2
    for c in ["cell_type", "status"]:
        assert obs[c].astype(str).tolist() == csv[c].astype(str).tolist()
    for c in pcols:
        np.testing.assert_array_equal(obs[c].to_numpy(), csv[c].to_numpy(), err_msg=c)
    np.testing.assert_array_equal(adata.obsm["spatial"], csv[["x", "y"]].to_numpy())
    markers = list(adata.var_names)
    np.testing.assert_allclose(adata.X, csv[markers].to_numpy(np.float32), rtol=0, atol=0)
    meta = json.loads((tiny_model / "s2s_config.json").read_text())
    assert list(adata.obs["cell_type"].cat.categories) == meta["type_labels"]
    assert len(adata.uns["cell_type_colors"]) == len(meta["type_labels"])
    assert list(adata.uns["image_status"].index) == summary["image"].tolist()


def test_local_cluster_gives_identical_outputs(tmp_path, serial_run, steinbock_dir, tiny_model):
    out_a, _ = serial_run
    out_b = tmp_path / "cluster"
    result = run_batch(steinbock_dir, out_b, model=tiny_model, device="cpu", workers=2)
    assert result.ok and "LocalCluster (2 processes" in result.run["settings"]["mode"]
    assert tree(out_a) == tree(out_b)
    assert_same_h5ad(out_a / "cells.h5ad", out_b / "cells.h5ad")


def test_rerun_skips_done_images_and_overwrite_redoes_them(tmp_path, steinbock_dir, tiny_model, serial_run):
    out = tmp_path / "out"
    shutil.copytree(serial_run[0], out)
    before = tree(out)
    seen = []
    result = run_batch(steinbock_dir, out, model=tiny_model, device="cpu",
                       progress=lambda rec, done, total: seen.append((rec and rec["state"], done, total)))
    assert seen[0] == (None, 0, N_IMAGES) and [s[0] for s in seen[1:]] == ["skipped"] * N_IMAGES
    assert result.ok and result.run["images"]["skipped_already_done"] == N_IMAGES
    assert tree(out) == before
    result = run_batch(steinbock_dir, out, model=tiny_model, device="cpu", overwrite=True)
    assert result.run["images"]["annotated"] == N_IMAGES and tree(out) == before


# ------------------------------------------------------------------------------------------ kill + resume
# `s2s annotate` in a process whose (N+1)-th types TIFF stalls half-written (its cells CSV written, the
# TIFF a temporary file), so that the test can kill the run right there; the hook lives here, not in the
# library
STALL_AFTER = """
import sys, time
from spatial2sentence.batch import outputs
from spatial2sentence.cli import main
real, calls = outputs.write_tiff_atomic, []
def stall(path, *args, **kwargs):
    calls.append(path)
    if len(calls) > int(sys.argv[1]):
        with outputs.atomic_path(path) as tmp:
            tmp.write_bytes(b"half-written")
            time.sleep(3600)
    return real(path, *args, **kwargs)
outputs.write_tiff_atomic = stall
main(["annotate", *sys.argv[2:]])
"""


def _cli(args, stall_after=None):
    cmd = ([sys.executable, "-c", STALL_AFTER, str(stall_after)] if stall_after is not None
           else [sys.executable, "-m", "spatial2sentence.cli", "annotate"])
    return subprocess.Popen(cmd + list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigkill_midway_then_rerun_equals_uninterrupted_run(tmp_path, steinbock_dir, tiny_model, serial_run):
    out = tmp_path / "out"
    args = [steinbock_dir, "-o", out, "--model", tiny_model, "--device", "cpu"]
    # the hook stalls the 2nd image half-way: its CSV written, its types TIFF a temporary file
    proc = _cli(args, stall_after=1)
    deadline = time.time() + 120
    while time.time() < deadline:
        # the stall: the 2nd image's temporary types file, once the 1st image is done (the 1st image's
        # own temporary file, seen while it is being written on a slow machine, is not the stall)
        stalled = (out / "types").is_dir() and list((out / "types").glob(".*.part"))
        if stalled and len(list((out / "done").glob("*.json"))) == 1:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the run never reached the stall point")
    # a second run into the same folder is refused while the first holds it (and deletes nothing of it)
    with pytest.raises(S2SInputError, match=f"another s2s annotate run \\(pid {proc.pid},"):
        run_batch(steinbock_dir, out, model=tiny_model, device="cpu")
    assert list((out / "types").glob(".*.part"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    names = [n.name for n in sorted((steinbock_dir / "img").iterdir())]
    assert len(list((out / "done").glob("*.json"))) == 1
    assert (out / "cells" / names[1].replace(".tiff", ".csv")).exists()  # second image half done
    assert not (out / "summary.csv").exists()

    proc = _cli(args)  # the killed run's lock went with its process
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr.decode()
    assert f"{N_IMAGES - 1} annotated, 1 already done" in stdout.decode()
    run = json.loads((out / "run.json").read_text())
    assert run["stale_temporary_files_removed"] == 1
    assert not list(out.rglob("*.part"))
    assert tree(out) == tree(serial_run[0])
    assert_same_h5ad(out / "cells.h5ad", serial_run[0] / "cells.h5ad")


# ------------------------------------------------------------------------------------------ bad input
def test_bad_images_are_reported_and_the_run_goes_on(tmp_path, crops, tiny_model):
    from click.testing import CliRunner

    from spatial2sentence.cli import main

    images, panel = crops
    src = tmp_path / "in"
    src.mkdir()
    write_panel(src / "panel.csv", panel)
    (name0, img0, mask0), (name1, img1, mask1) = images[:2]
    write_tiff_atomic(src / "good1.tiff", img0)
    write_tiff_atomic(src / "good1_mask.tiff", mask0)
    write_tiff_atomic(src / "good2.tiff", img1)
    write_tiff_atomic(src / "good2_mask.tiff", mask1)
    # corrupt: a TIFF header followed by garbage
    (src / "corrupt.tiff").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    write_tiff_atomic(src / "corrupt_mask.tiff", mask0)
    # shape mismatch: the mask is 10 px narrower than the image
    write_tiff_atomic(src / "mismatch.tiff", img0)
    write_tiff_atomic(src / "mismatch_mask.tiff", np.ascontiguousarray(mask0[:, :-10]))
    # non-integer mask: float ids with fractions
    write_tiff_atomic(src / "fraction.tiff", img1)
    write_tiff_atomic(src / "fraction_mask.tiff", mask1.astype(np.float32) * 0.5)
    before = hashes(src)

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["annotate", str(src), "-o", str(out), "--model", str(tiny_model),
                                    "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert "2 annotated, 0 already done, 3 failed of 5 images" in res.output
    errors = pd.read_csv(out / "errors.csv").set_index("image")
    assert sorted(errors.index) == ["corrupt", "fraction", "mismatch"]
    assert "not a readable TIFF" in errors.loc["corrupt", "reason"]
    assert Path(errors.loc["corrupt", "file"]).name == "corrupt.tiff"
    assert "differs from image shape" in errors.loc["mismatch", "reason"]
    assert Path(errors.loc["mismatch", "file"]).name == "mismatch_mask.tiff"
    assert "not integer" in errors.loc["fraction", "reason"]
    assert Path(errors.loc["fraction", "file"]).name == "fraction_mask.tiff"
    assert pd.read_csv(out / "summary.csv")["image"].tolist() == ["good1", "good2"]
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["good1.csv", "good2.csv"]
    assert hashes(src) == before  # inputs never modified

    # a rerun retries the failed images only, and still fails on them
    res = CliRunner().invoke(main, ["annotate", str(src), "-o", str(out), "--model", str(tiny_model),
                                    "--device", "cpu"])
    assert res.exit_code == 1 and "0 annotated, 2 already done, 3 failed" in res.output
    assert len(pd.read_csv(out / "errors.csv")) == 3


def test_usage_errors(tmp_path, steinbock_dir, tiny_model):
    from click.testing import CliRunner

    from spatial2sentence.cli import main

    res = CliRunner().invoke(main, ["annotate", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "input folder not found" in res.output
    res = CliRunner().invoke(main, ["annotate", str(steinbock_dir), "-o", str(tmp_path / "o"), "--workers", "2",
                                    "--scheduler", "tcp://localhost:1"])
    assert res.exit_code == 1 and "not both" in res.output  # usage errors exit 1 too
    res = CliRunner().invoke(main, ["annotate", str(steinbock_dir), "-o", str(tmp_path / "o"), "--model",
                                    str(tmp_path)])
    assert res.exit_code == 1 and "not a napari-s2s model: missing s2s_config.json" in res.output
    with pytest.raises(S2SInputError, match="dtype"):
        run_batch(steinbock_dir, tmp_path / "o", model=tiny_model, dtype="half")


def test_bfloat16_run_records_its_dtype(tmp_path, steinbock_dir, tiny_model, serial_run):
    from click.testing import CliRunner

    from spatial2sentence.cli import main

    out = tmp_path / "bf16"
    res = CliRunner().invoke(main, ["annotate", str(steinbock_dir), "-o", str(out), "--model", str(tiny_model),
                                    "--device", "cpu", "--dtype", "bfloat16"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["dtype"] == "bfloat16" and run["images"]["annotated"] == N_IMAGES
    name = json.loads(next((out / "done").glob("*.json")).read_text())["image"]
    assert json.loads((out / "done" / f"{name}.json").read_text())["dtype"] == "bfloat16"
    a = pd.read_csv(serial_run[0] / "cells" / f"{name}.csv")
    b = pd.read_csv(out / "cells" / f"{name}.csv")
    assert (a["cell_type"] == b["cell_type"]).mean() >= 0.9  # nearly the float32 answers


def test_scoring_threads_change_no_bit_and_leave_torch_alone(steinbock_dir, tiny_model):
    """The same cells scored 1 or 3 batches at a time, with torch set to 3 threads by the caller:
    identical probabilities, and torch's setting is what the caller left."""
    import torch

    from spatial2sentence.io import read_image, read_mask
    from spatial2sentence.measure import measure_cells
    from spatial2sentence.model import S2SModel

    name = sorted((steinbock_dir / "img").iterdir())[0]
    image = read_image(name, panel=steinbock_dir / "panel.csv")
    cells = measure_cells(image, read_mask(steinbock_dir / "masks" / name.name, image.shape))
    model = S2SModel.from_pretrained(tiny_model, device="cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        runs = [model.predict_cells(cells, markers=image.channels, batch_size=16, threads=t).cells
                for t in (1, 3, None)]
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert len(runs[0]) > 16 * 3  # several batches in flight at once
    for other in runs[1:]:
        pd.testing.assert_frame_equal(runs[0], other, check_exact=True)


def test_steinbock_folder_with_ome_only_is_found(tmp_path):
    """The bundled simulated islet (steinbock layout with ome/ and masks/, no img/) is an input."""
    from spatial2sentence.batch import discover

    disc = discover(REPO / "sample_data" / "simulated_islet")
    assert disc.kind == "steinbock" and [j.name for j in disc.jobs] == ["R13_islet"]
    assert disc.jobs[0].mask_path.endswith("masks/R13_islet.tiff") and disc.jobs[0].problem is None
