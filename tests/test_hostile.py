"""Hostile and broken inputs: each gives exit code 1 and one line naming the file and the problem, no
traceback, no output, the input bytes unchanged, nothing run from the file (generated fixtures)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from conftest import DAMOND_TOY as TOY

from spatial2sentence.cli import main as cli_main
from spatial2sentence.io import write_tiff_atomic
from spatial2sentence.model import DEFAULT_MODEL_DIR

REPO = Path(__file__).resolve().parents[1]


def s2s(*args, cwd=None, timeout=300):
    """Run the CLI in a fresh process (as a user does): (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "spatial2sentence.cli", *map(str, args)], capture_output=True,
                       text=True, cwd=cwd, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def assert_refused(code, err, *needles):
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert str(n) in lines[0], lines[0]


class _RunsCode:
    """A pickle payload that, if unpickled, creates a file (a stand-in for arbitrary code)."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_resume_refuses_a_pickled_checkpoint_and_runs_nothing(tmp_path):
    out = tmp_path / "model"
    ckpt = out / "checkpoint" / "state.pt"
    ckpt.parent.mkdir(parents=True)
    ran = tmp_path / "code_ran"
    with open(ckpt, "wb") as fh:
        pickle.dump({"model": _RunsCode(ran)}, fh)
    before = ckpt.read_bytes()
    code, _, err = s2s("train", "--data", TOY, "--out", out, "--steps", "2", "--resume")
    assert_refused(code, err, ckpt, "refused, nothing run")
    assert not ran.exists()
    assert ckpt.read_bytes() == before


# ---------------------------------------------------------------------------------- generated fixtures
E34 = TOY / "img" / "E34.tiff"
E34_MASK = TOY / "masks" / "E34.tiff"
PANEL = TOY / "panel.csv"


def run(*args):
    """The CLI in this process: (exit code, output); an exception other than SystemExit is a traceback."""
    res = CliRunner().invoke(cli_main, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def refused(args, *needles, outputs=()):
    code, out = run(*args)
    assert code == 1, out
    lines = [ln for ln in out.strip().splitlines() if ln.lower().startswith("error")]
    assert len(lines) >= 1 and "Traceback" not in out, out
    for n in needles:
        assert str(n) in out, out
    for o in outputs:
        assert not Path(o).exists(), f"{o} was written"
    return out


def digest(*paths):
    return {str(p): Path(p).read_bytes() for p in paths}


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for src, name in ((E34, "img.tiff"), (E34_MASK, "mask.tiff"), (PANEL, "panel.csv")):
        shutil.copy(src, d / name)
    return d


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7, 0.95, 0.999])
def test_truncated_image_is_refused(image_dir, tmp_path, fraction):
    data = (image_dir / "img.tiff").read_bytes()
    cut = image_dir / "cut.tiff"
    cut.write_bytes(data[: int(len(data) * fraction)])
    refused(["measure", cut, image_dir / "mask.tiff", "-o", tmp_path / "o.csv"], "cut.tiff", "truncated",
            outputs=[tmp_path / "o.csv"])


def test_truncated_mask_is_refused(image_dir, tmp_path):
    data = (image_dir / "mask.tiff").read_bytes()
    (image_dir / "m.tiff").write_bytes(data[: len(data) // 2])
    refused(["measure", image_dir / "img.tiff", image_dir / "m.tiff", "-o", tmp_path / "o.csv"], "m.tiff",
            outputs=[tmp_path / "o.csv"])


def _header_bomb(path: Path, shape, dtype):
    """A TIFF whose header claims ``shape`` while the file holds (almost) nothing: written sparse."""
    tifffile.imwrite(path, shape=shape, dtype=dtype, photometric="minisblack")
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS read from /proc")
def test_header_bomb_is_refused_quickly_with_little_memory(tmp_path):
    bomb = _header_bomb(tmp_path / "bomb.tiff", (40, 10000, 10000), "float32")
    mask = write_tiff_atomic(tmp_path / "mask.tiff", np.ones((10000, 10000), np.uint8)[:10, :10])
    # peak RSS from /proc (VmHWM belongs to this process image; getrusage's maxrss would include the
    # forked pytest process's RSS, which Linux carries across exec)
    code = ("import sys, time; t = time.perf_counter()\n"
            "from spatial2sentence.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]\n"
            "    print('rc', e.code, 'rss_mb', int(hwm) / 1024, 's', time.perf_counter() - t, file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code, "measure", str(bomb), str(mask), "-o", str(tmp_path / "o.csv")],
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in p.stderr and "GB limit" in p.stderr and "S2S_MAX_IMAGE_GB" in p.stderr, p.stderr
    stats = p.stderr.strip().splitlines()[-1].split()
    assert stats[1] == "1" and float(stats[3]) < 500 and float(stats[5]) < 2.0, p.stderr
    assert not (tmp_path / "o.csv").exists()


def test_mask_bomb_and_mask_of_another_size_are_refused_from_headers(image_dir, tmp_path):
    bomb = _header_bomb(tmp_path / "mbomb.tiff", (100000, 100000), "uint16")
    out = refused(["measure", image_dir / "img.tiff", bomb, "-o", tmp_path / "o.csv"], "mbomb.tiff",
                  outputs=[tmp_path / "o.csv"])
    assert "GB" in out or "differs" in out
    other = write_tiff_atomic(tmp_path / "other.tiff", np.ones((50, 60), np.uint16))
    refused(["measure", image_dir / "img.tiff", other, "-o", tmp_path / "o.csv"], "differs",
            outputs=[tmp_path / "o.csv"])


def test_size_limit_can_be_raised_and_must_be_a_number(image_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("S2S_MAX_IMAGE_GB", "0.00001")
    refused(["measure", image_dir / "img.tiff", image_dir / "mask.tiff", "-o", tmp_path / "o.csv"],
            "S2S_MAX_IMAGE_GB")
    monkeypatch.setenv("S2S_MAX_IMAGE_GB", "lots")
    refused(["measure", image_dir / "img.tiff", image_dir / "mask.tiff", "-o", tmp_path / "o.csv"],
            "S2S_MAX_IMAGE_GB")
    monkeypatch.setenv("S2S_MAX_IMAGE_GB", "1")
    assert run("measure", image_dir / "img.tiff", image_dir / "mask.tiff", "-o", tmp_path / "o.csv")[0] == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_instead_of_hanging(image_dir, tmp_path):
    fifo = tmp_path / "x.tiff"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    code, _, err = s2s("measure", fifo, image_dir / "mask.tiff", "-o", tmp_path / "o.csv", timeout=60)
    assert_refused(code, err, "x.tiff", "not a regular file")
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("names", [("CD8A", "CD8a"), ("H3", "h3")])
def test_panel_naming_one_marker_twice_after_alias_matching_is_refused(image_dir, tmp_path, names):
    rows = ["channel,name,keep", "In113,H3,1", "In115,CD99,1", "Pr141,PIN,1", "Nd142,CD8a,1", "Nd143,CDH,1"]
    rows[1] = f"In113,{names[0]},1"
    rows[4] = f"Nd142,{names[1]},1"
    if names[0] == "H3":
        rows[4] = f"Nd142,{names[1]},1"
    (image_dir / "dup.csv").write_text("\n".join(rows) + "\n")
    out = refused(["measure", image_dir / "img.tiff", image_dir / "mask.tiff", "--panel", image_dir / "dup.csv",
                   "-o", tmp_path / "o.csv"], "dup.csv", names[0], names[1], "rows 2 and 5",
                  outputs=[tmp_path / "o.csv"])
    assert "same marker" in out


def test_panel_keeping_no_channel_is_refused(image_dir, tmp_path):
    (image_dir / "none.csv").write_text("channel,name,keep\n" + "".join(f"X{i},M{i},0\n" for i in range(5)))
    refused(["measure", image_dir / "img.tiff", image_dir / "mask.tiff", "--panel", image_dir / "none.csv",
             "-o", tmp_path / "o.csv"], "no channel is kept", outputs=[tmp_path / "o.csv"])


@pytest.mark.parametrize("which", ["mask.tiff", "img.tiff", "panel.csv"])
def test_output_that_is_an_input_is_refused_and_the_input_kept(image_dir, which):
    before = digest(*image_dir.iterdir())
    refused(["measure", image_dir / "img.tiff", image_dir / "mask.tiff", "--panel", image_dir / "panel.csv",
             "-o", image_dir / which], "overwrite the input")
    assert digest(*image_dir.iterdir()) == before


def test_output_under_a_file_or_onto_a_folder_is_refused(image_dir, tmp_path):
    refused(["measure", image_dir / "img.tiff", image_dir / "mask.tiff", "-o", image_dir / "panel.csv" / "o.csv"],
            "is a file")
    refused(["measure", image_dir / "img.tiff", image_dir / "mask.tiff", "-o", tmp_path], "is a folder")
    refused(["predict", image_dir / "img.tiff", image_dir / "mask.tiff", "-o", tmp_path], "is a directory")


def _model_copy(tmp_path) -> Path:
    m = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, m)
    return m


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _json_edit(name, **changes):
    def edit(p: Path):
        d = json.loads((p / name).read_text())
        d.update(changes)
        (p / name).write_text(json.dumps(d))
    return edit


MODEL_BREAKS = {
    "truncated weights": lambda p: _truncate(p / "model.safetensors"),
    "garbage weights": lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 100),
    "no weights": lambda p: (p / "model.safetensors").unlink(),
    "pickled weights only": lambda p: ((p / "model.safetensors").rename(p / "pytorch_model.bin")),
    "bad s2s_config": lambda p: (p / "s2s_config.json").write_text("{not json"),
    "empty s2s_config": lambda p: (p / "s2s_config.json").write_text(""),
    "s2s_config a list": lambda p: (p / "s2s_config.json").write_text("[]"),
    "no prompt settings": lambda p: _json_edit("s2s_config.json", prompt=None)(p),
    "empty type_labels": lambda p: _json_edit("s2s_config.json", type_labels=[])(p),
    "unknown labels": lambda p: _json_edit("s2s_config.json", type_labels=["never_seen"])(p),
    "no tokenizer": lambda p: (p / "tokenizer.json").unlink(),
    "bad tokenizer": lambda p: (p / "tokenizer.json").write_text("{}"),
    "bad config.json": lambda p: (p / "config.json").write_text("{\"model_type\": \"bert\"}"),
    "not a folder": lambda p: (shutil.rmtree(p), p.write_text("x")),
}


@pytest.mark.parametrize("case", sorted(MODEL_BREAKS))
def test_broken_model_folders_give_one_message(image_dir, tmp_path, case):
    model = _model_copy(tmp_path)
    MODEL_BREAKS[case](model)
    out = tmp_path / "p.csv"
    msg = refused(["predict", "--model", model, image_dir / "img.tiff", image_dir / "mask.tiff", "-o", out],
                  str(model), outputs=[out])
    assert "not a napari-s2s model" in msg or "is a file" in msg


def test_missing_model_folder_says_not_found(image_dir, tmp_path):
    refused(["predict", "--model", tmp_path / "nope", image_dir / "img.tiff", image_dir / "mask.tiff", "-o",
             tmp_path / "p.csv"], "model folder not found")


def test_annotate_with_a_broken_model_is_refused(tmp_path):
    model = _model_copy(tmp_path)
    (model / "s2s_config.json").write_text("{")
    refused(["annotate", TOY, "-o", tmp_path / "out", "--model", model], "not a napari-s2s model")


@pytest.mark.parametrize("device", ["cuda", "gpu", "mps", "banana"])
@pytest.mark.parametrize("command", ["predict", "explain", "train"])
def test_bad_or_absent_devices_are_refused_before_any_work(image_dir, tmp_path, device, command):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "o"
    args = {"predict": ["predict", image_dir / "img.tiff", image_dir / "mask.tiff", "-o", out],
            "explain": ["explain", image_dir / "img.tiff", image_dir / "mask.tiff", "--cell", "1"],
            "train": ["train", "--data", TOY, "--out", out, "--steps", "1"]}[command]
    refused([*args, "--device", device], "--device", outputs=[out])


@pytest.mark.parametrize("args,needle", [
    (["explain", "IMG", "MASK", "--cell", "1", "--steps", "100000"], "--steps"),
    (["predict", "IMG", "MASK", "-o", "OUT/p.csv", "--threads", "-1"], "--threads"),
    (["train", "--data", "IMG", "--out", "OUT/m"], "an image alone has no labels"),
    (["train", "--data", TOY, "--out", "OUT/m", "--steps", "-5"], "--steps"),
    (["train", "--config", "BADJSON", "--out", "OUT/m"], "not a JSON recipe"),
    (["train", "--config", "BADKEYS", "--out", "OUT/m"], "unknown settings"),
    (["measure", "--no-such-option"], "No such option"),
])
def test_bad_options_are_refused_with_exit_code_1(image_dir, tmp_path, args, needle):
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "keys.json").write_text(json.dumps({"train": {"stepz": 3}}))
    subst = {"IMG": image_dir / "img.tiff", "MASK": image_dir / "mask.tiff", "OUT": tmp_path / "out",
             "BADJSON": tmp_path / "bad.json", "BADKEYS": tmp_path / "keys.json"}
    args = [subst.get(a, a) if isinstance(a, str) and "/" not in a else a for a in args]
    args = [str(subst["OUT"]) + a[3:] if isinstance(a, str) and a.startswith("OUT/") else a for a in args]
    refused(args, needle)
    assert not (tmp_path / "out").exists()  # nothing written, not even an empty model folder


def _steinbock_copy(tmp_path) -> Path:
    d = tmp_path / "sb"
    shutil.copytree(TOY, d, ignore=shutil.ignore_patterns("original_cells_table.csv"))
    return d


def test_images_csv_not_in_utf8_is_refused(tmp_path):
    d = _steinbock_copy(tmp_path)
    (d / "images.csv").write_bytes("image,description\nE34.tiff,Zürich Ø\n".encode("latin-1"))
    refused(["measure", d, "-o", tmp_path / "o"], "images.csv", "UTF-8", outputs=[tmp_path / "o"])


def test_images_csv_cannot_point_outside_img(tmp_path):
    d = _steinbock_copy(tmp_path)
    shutil.copy(E34, tmp_path / "x.tiff")
    (d / "images.csv").write_text("image\n../../x.tiff\n")
    refused(["measure", d, "-o", tmp_path / "o"], "images.csv", "not a file name inside img/",
            outputs=[tmp_path / "o"])


def test_two_files_with_one_image_name_are_reported_and_the_run_finishes(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    shutil.copy(E34, d / "E34.tiff")
    shutil.copy(E34, d / "E34.tif")
    shutil.copy(E34_MASK, d / "E34_mask.tiff")
    shutil.copy(PANEL, d / "panel.csv")
    out = tmp_path / "out"
    for _ in range(2):  # the rerun too
        code, text = run("annotate", d, "-o", out)
        assert code == 1 and "Traceback" not in text, text
        assert (out / "run.json").exists() and (out / "cells.h5ad").exists()
        errors = (out / "errors.csv").read_text()
        assert "same image name 'E34'" in errors


def test_ome_pixel_size_zero_and_complex_pixels_are_refused(tmp_path, image_dir):
    data = tifffile.imread(E34)
    ome = tmp_path / "zero.ome.tiff"
    tifffile.imwrite(ome, data, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0, "PhysicalSizeY": 0})
    refused(["measure", ome, image_dir / "mask.tiff", "-o", tmp_path / "o.csv"], "pixel size",
            outputs=[tmp_path / "o.csv"])
    cplx = tmp_path / "complex.tiff"
    tifffile.imwrite(cplx, data.astype(np.complex64))
    refused(["measure", cplx, image_dir / "mask.tiff", "-o", tmp_path / "o.csv"], "complex",
            outputs=[tmp_path / "o.csv"])


def test_formula_like_marker_names_are_neutralised_in_csv(image_dir, tmp_path):
    (image_dir / "evil.csv").write_text("channel,name,keep\nA1,=HYPERLINK(1),1\nA2,+CD99,1\nA3,@PIN,1\n"
                                        "A4,-CD8a,1\nA5,CDH,1\n")
    out = tmp_path / "o.csv"
    code, text = run("measure", image_dir / "img.tiff", image_dir / "mask.tiff", "--panel", image_dir / "evil.csv",
                     "-o", out)
    assert code == 0, text
    header = out.read_text().splitlines()[0].split(",")
    assert not [h for h in header if h[:1] in "=+-@"], header
    assert "'=HYPERLINK(1)" in out.read_text().splitlines()[0]


def test_missing_input_answers_before_the_model_loads():
    t0 = time.perf_counter()
    code, _, err = s2s("predict", "missing.tiff", "mask.tiff", "-o", "x.csv")
    assert_refused(code, err, "missing.tiff", "file not found")
    assert time.perf_counter() - t0 < 2.0 + 3.0  # must-show: < 2 s; slack for a loaded CI machine
    assert "torch" not in err


def test_click_usage_errors_exit_with_1():
    code, _, err = s2s("predict")
    assert code == 1 and "Missing option '-o'" in err
