"""Hostile and broken inputs: each gives exit code 1 and one line naming the file and the problem, no
traceback, no output, the input bytes unchanged, nothing run from the file (generated fixtures)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOY = REPO.parent / "shared" / "data" / "damond_pancreas_toy"


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
