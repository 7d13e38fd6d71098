"""``s2s measure`` end to end: outputs, help, and one clear line per bad input with nothing written."""

import re

import numpy as np
import pandas as pd
import pytest
import tifffile
from click.testing import CliRunner
from conftest import STEINBOCK

from spatial2sentence.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_of_every_subcommand():
    result = run("--help")
    assert result.exit_code == 0 and "measure" in result.output
    for name, command in main.commands.items():
        sub = run(name, "--help")
        assert sub.exit_code == 0 and command.help and len(sub.output) > 100, name


def test_measure_steinbock_folder_writes_one_csv_per_image(tmp_path):
    result = run("measure", STEINBOCK, "-o", tmp_path / "out", "--mask-dir", "masks_deepcell")
    assert result.exit_code == 0, result.output
    written = sorted(p.stem for p in (tmp_path / "out").glob("*.csv"))
    assert written == sorted(p.stem for p in (STEINBOCK / "img").glob("*.tiff"))
    cells = pd.read_csv(tmp_path / "out" / "20210305_NE_mockData2_002.csv")
    ref = pd.read_csv(STEINBOCK / "intensities_deepcell" / "20210305_NE_mockData2_002.csv")
    assert list(cells.columns) == ["Object", "x", "y", "area", *ref.columns[1:]]
    np.testing.assert_allclose(cells[ref.columns].to_numpy(), ref.to_numpy(), rtol=1e-6)
    assert not list((tmp_path / "out").glob(".*part"))


def test_measure_image_and_mask(tmp_path, tiny_image):
    out = tmp_path / "cells.csv"
    result = run("measure", tiny_image["image"], tiny_image["mask_path"], "--panel", tiny_image["panel"], "-o", out)
    assert result.exit_code == 0, result.output
    cells = pd.read_csv(out)
    assert cells.columns.tolist() == ["Object", "x", "y", "area", "CD3", "CD8a", "DNA1"]
    assert cells["Object"].tolist() == [1, 2, 3, 7]


def _write(path, array):
    tifffile.imwrite(path, array)
    return path


BAD_CASES = {
    "missing image": (lambda d, t: [d / "nope.tiff", t["mask_path"]], "nope.tiff: file not found"),
    "corrupt tiff": (lambda d, t: [(d / "c.tiff").write_bytes(b"not a tiff at all") and d / "c.tiff", t["mask_path"]],
                     "c.tiff: not a readable TIFF"),
    "shape mismatch": (lambda d, t: [t["image"], _write(d / "m.tiff", np.ones((39, 50), np.uint16))],
                       r"m.tiff: mask shape \(39, 50\) differs from image shape \(40, 50\)"),
    "mask not integer": (lambda d, t: [t["image"], _write(d / "m.tiff", np.full((40, 50), 0.5, np.float32))],
                         "m.tiff: mask is not integer"),
    "mask without cells": (lambda d, t: [t["image"], _write(d / "m.tiff", np.zeros((40, 50), np.uint16))],
                           "m.tiff: mask contains no cells"),
    "2-D image": (lambda d, t: [_write(d / "i.tiff", np.ones((40, 50), np.float32)), t["mask_path"]],
                  r"i.tiff: 2-D single-channel image"),
    "ambiguous stack": (lambda d, t: [_write(d / "i.tiff", np.ones((45, 40, 50), np.float32)), t["mask_path"]],
                        r"i.tiff: 3-D stack of shape \(45, 40, 50\) has ambiguous axes"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gives_one_line_and_no_output(tmp_path, tiny_image, case):
    make, message = BAD_CASES[case]
    args = make(tmp_path, tiny_image)
    out = tmp_path / "out.csv"
    result = run("measure", *args, "-o", out)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


@pytest.mark.parametrize(
    "panel_text, message",
    [
        ("channel,name,keep\nA,CD3,1\nB,CD8a,1\n", "p.csv: panel has 2 kept channels .* has 3 channels"),
        ("channel,name,keep\nA,CD3,1\nB,CD3,1\nC,DNA1,1\n", "p.csv: duplicate marker names: 'CD3' is repeated \\(rows 2 and 3\\)"),
    ],
)
def test_bad_panel_gives_one_line_and_no_output(tmp_path, tiny_image, panel_text, message):
    (tmp_path / "p.csv").write_text(panel_text)
    out = tmp_path / "out.csv"
    result = run("measure", tiny_image["image"], tiny_image["mask_path"], "--panel", tmp_path / "p.csv", "-o", out)
    assert result.exit_code == 1
    assert re.search(message, result.stderr), result.stderr
    assert not out.exists()


def test_nan_pixels_are_reported_and_cells_flagged(tmp_path, tiny_image):
    data = tiny_image["data"].copy()
    data[2, 20, 25] = np.nan
    tifffile.imwrite(tmp_path / "nan.tiff", data)
    out = tmp_path / "cells.csv"
    result = run("measure", tmp_path / "nan.tiff", tiny_image["mask_path"], "-o", out)
    assert result.exit_code == 0
    assert "nan.tiff: image holds NaN or inf pixels; 1 cells" in result.stderr
    cells = pd.read_csv(out)
    assert cells.set_index("Object")["nonfinite_pixels"].to_dict() == {1: 0, 2: 1, 3: 0, 7: 0}


def test_steinbock_folder_goes_on_past_a_bad_image(tmp_path):
    import shutil

    root = tmp_path / "sb"
    for sub in ("img", "masks"):
        (root / sub).mkdir(parents=True)
    shutil.copy(STEINBOCK / "panel.csv", root)
    names = ["20210305_NE_mockData1_001.tiff", "20210305_NE_mockData1_002.tiff"]
    for name in names:
        shutil.copy(STEINBOCK / "img" / name, root / "img")
        shutil.copy(STEINBOCK / "masks" / name, root / "masks")
    (root / "masks" / names[1]).write_bytes(b"broken")
    result = run("measure", root, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert f"{names[1]}: not a readable TIFF" in result.stderr
    assert [p.name for p in (tmp_path / "out").glob("*.csv")] == ["20210305_NE_mockData1_001.csv"]
