"""The command line as the README shows it: the bundled samples are accepted, the options are spelt
alike in every command, and an error comes before any progress bar, in one line naming the file."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from spatial2sentence.cli import main

REPO = Path(__file__).resolve().parents[1]
ISLET = REPO / "sample_data" / "simulated_islet"
TOY = REPO / "sample_data" / "damond_pancreas_toy"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_measure_reads_the_bundled_islet_folder_with_out_or_output(tmp_path):
    """sample_data/simulated_islet keeps its image under ome/ (no img/): measured all the same; --out
    like every other command, --output kept as the old spelling."""
    for flag in ("--out", "--output"):
        out = tmp_path / flag.strip("-")
        result = run("measure", ISLET, flag, out)
        assert result.exit_code == 0, result.output
        cells = pd.read_csv(out / "R13_islet.csv")
        assert len(cells) == 609 and "INS" in cells.columns


def test_annotate_reads_the_bundled_islet_folder(tmp_path, tiny_model):
    result = run("annotate", ISLET, "-o", tmp_path / "out", "--model", tiny_model, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "out" / "cells" / "R13_islet.csv")) == 609


def test_device_defaults_to_auto_everywhere():
    with_device = {name: next(p for p in cmd.params if p.name == "device")
                   for name, cmd in main.commands.items() if any(p.name == "device" for p in cmd.params)}
    assert {"predict", "annotate", "explain", "train"} <= set(with_device)
    assert {name: p.default for name, p in with_device.items()} == {name: "auto" for name in with_device}


def test_measure_and_the_others_take_out():
    for name in ("measure", "annotate", "train", "predict", "simulate"):
        opts = {o for p in main.commands[name].params for o in getattr(p, "opts", [])}
        assert "--out" in opts or "-o" in opts, name


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/folder"], "input folder not found"),
    (["{empty}"], "no images found"),
    (["{toy}", "--model", "/nonexistent/model"], "model folder not found"),
])
def test_annotate_error_comes_before_any_progress_bar(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", toy=TOY) for a in args]
    result = CliRunner().invoke(main, ["annotate", *args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert message in result.output and "annotating" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_sentences_example_of_the_readme_runs_and_wrong_ids_say_which_exist():
    """The README's `s2s sentences` line runs as written on the sample; ids not in the image stop with
    one line naming the file and the ids that exist."""
    line = next(ln for ln in (REPO / "README.md").read_text().splitlines() if ln.startswith("s2s sentences sample_data"))
    argv = shlex.split(line.split("#")[0])[1:]
    import os

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        result = run(*argv)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    ids = re.search(r"--cells (\S+)", line).group(1).split(",")
    assert [m for m in re.findall(r"# Object (\d+)", result.output)] == ids
    result = run("sentences", TOY / "img" / "E34.tiff", TOY / "masks" / "E34.tiff", "--panel", TOY / "panel.csv",
                 "--cells", "12,40")
    assert result.exit_code == 1
    out = result.output.strip()
    assert len(out.splitlines()) == 1 and "E34.tiff" in out and "no cell with Object 12, 40" in out
    assert "824 to 1312" in out
