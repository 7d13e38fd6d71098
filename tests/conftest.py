"""Shared fixtures: the real test data vendored in tests/data/ and small generated files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Small real subsets the tests read, with their licences (tests/data/README.md); nothing beside the
# repository is needed.
TEST_DATA = REPO / "tests" / "data"
STEINBOCK = TEST_DATA / "imc_testdata" / "steinbock"
RAW = TEST_DATA / "imc_testdata" / "raw"
DAMOND_TOY = TEST_DATA / "damond_pancreas_toy"
LAYOUTS = TEST_DATA / "damond_diabetes_layouts" / "cells.csv.gz"
SCIMAP = TEST_DATA / "scimap_cycif"
# The full datasets (benchmarks, training; no test needs them): $S2S_DATA, default ../shared/data.
FULL_DATA = Path(os.environ.get("S2S_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    if not STEINBOCK.is_dir():
        raise pytest.UsageError(f"the vendored test data is missing: expected {TEST_DATA}")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def tiny_image(tmp_path, rng):
    """A generated 3-channel 40 x 50 image with 4 rectangular cells, written as CYX TIFF + mask."""
    from spatial2sentence.io import write_tiff_atomic

    mask = np.zeros((40, 50), np.uint16)
    mask[2:10, 3:12] = 1
    mask[15:25, 20:30] = 2
    mask[30:38, 5:9] = 7  # ids need not be consecutive
    mask[5:9, 40:48] = 3
    data = rng.gamma(2.0, 2.0, size=(3, 40, 50)).astype(np.float32)
    image_path = write_tiff_atomic(tmp_path / "img.tiff", data)
    mask_path = write_tiff_atomic(tmp_path / "mask.tiff", mask)
    panel_path = tmp_path / "panel.csv"
    panel_path.write_text("channel,name,keep\nSm147,CD3,1\nNd150,CD8a,1\nIr191,DNA1,1\n")
    return {"data": data, "mask": mask, "image": image_path, "mask_path": mask_path, "panel": panel_path}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random model of the full Damond panel (napari_s2s._testing), shared by the plugin, batch
    and CLI tests: they only read it."""
    from napari_s2s._testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def notes(monkeypatch):
    """Every notification the Annotate cells widget shows, as (kind, message)."""
    seen = []
    import napari_s2s._widget as w

    monkeypatch.setattr(w, "_notify", lambda kind, msg: seen.append((kind, msg)))
    return seen
