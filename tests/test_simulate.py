"""Semi-synthetic IMC simulator: determinism, masks == labels, profiles, CLI errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from spatial2sentence.bench import simulate as sim
from spatial2sentence.errors import S2SInputError

from conftest import TEST_DATA as SHARED  # noqa: E402
LAYOUTS = SHARED / "damond_diabetes_layouts" / "cells.csv.gz"
TOY_PANEL = SHARED / "damond_pancreas_toy" / "panel.csv"
# four small images: Long-duration, Onset and two Non-diabetic (enough islet cells)
IMAGES = ["C29", "H33", "S18", "S35"]

pytestmark = pytest.mark.skipif(not LAYOUTS.exists(), reason="shared data not beside the repo")


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def layouts():
    return sim.load_layouts(LAYOUTS)


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_a")
    sim.simulate_dataset(LAYOUTS, out, images=IMAGES, seed=0, workers=1)
    return out


def test_same_seed_same_bytes_any_workers_other_seed_differs(sim_dir, tmp_path):
    again = tmp_path / "again"
    sim.simulate_dataset(LAYOUTS, again, images=IMAGES, seed=0, workers=2)
    a, b = _digests(sim_dir), _digests(again)
    assert set(a) >= {"img/C29.tiff", "ome/C29.ome.tiff", "masks/C29.tiff", "labels.csv",
                      "panel.csv", "images.csv"}
    assert a == b  # byte-identical, serial vs 2 worker processes
    # an image's bytes do not depend on the selection it was rendered with
    alone = tmp_path / "alone"
    sim.simulate_dataset(LAYOUTS, alone, images=["S18"], seed=0)
    assert _digests(alone)["img/S18.tiff"] == a["img/S18.tiff"]
    other = tmp_path / "other"
    sim.simulate_dataset(LAYOUTS, other, images=["S18"], seed=1)
    c = _digests(other)
    for key in ("img/S18.tiff", "ome/S18.ome.tiff", "masks/S18.tiff"):
        assert c[key] != a[key]


def test_steinbock_layout_and_panel(sim_dir, layouts):
    panel = pd.read_csv(sim_dir / "panel.csv")
    assert list(panel.columns) == ["channel", "name", "keep"]
    assert panel["name"].is_unique and panel["channel"].is_unique and len(panel) == 37
    toy = pd.read_csv(TOY_PANEL)
    assert set(toy["name"]) <= set(panel["name"])  # H3, CD99, PIN, CD8a, CDH shared with real data
    for m in ["INS", "GCG", "SST", "PPY", "NKX6-1", "PDX1", "CD45", "CD3e", "CD8a", "CD20", "CD68",
              "MPO", "KRT19", "AMY2A", "CD31", "SMA", "Ki67", "DNA1", "DNA2"]:
        assert m in set(panel["name"])
    images = pd.read_csv(sim_dir / "images.csv")
    assert images["image"].tolist() == [f"{i}.tiff" for i in IMAGES]
    for _, row in images.iterrows():
        name = row["image"][:-5]
        img = tifffile.imread(sim_dir / "img" / row["image"])
        assert img.dtype == np.float32
        assert img.shape == (37, row["height_px"], row["width_px"]) == (row["num_channels"],) + img.shape[1:]
        assert np.all(img >= 0) and np.all(img == np.round(img))  # ion counts
        with tifffile.TiffFile(sim_dir / "ome" / f"{name}.ome.tiff") as tif:
            assert tif.is_ome and "urn:uuid:" in tif.ome_metadata
            assert all(f'Name="{n}"' in tif.ome_metadata for n in panel["name"])
            np.testing.assert_array_equal(tif.asarray(), img)
        cells = layouts[layouts["imageID"] == name]
        assert img.shape[1:] == (int(cells["y"].max()) + 1, int(cells["x"].max()) + 1)


def test_masks_match_labels_and_layout(sim_dir, layouts):
    from spatial2sentence.measure import measure_cells

    labels = pd.read_csv(sim_dir / "labels.csv")
    assert list(labels.columns) == ["image", "Object", "cell_type", "donor", "stage"]
    channels = pd.read_csv(sim_dir / "panel.csv")["name"].tolist()
    for name in IMAGES:
        mask = tifffile.imread(sim_dir / "masks" / f"{name}.tiff")
        assert mask.dtype in (np.uint16, np.uint32)
        img = tifffile.imread(sim_dir / "img" / f"{name}.tiff")
        meas = measure_cells(img, mask, channels)
        lab = labels[labels["image"] == name]
        cells = layouts[layouts["imageID"] == name]
        # every layout cell is exactly one object, ids 1..n, in layout order, with its type
        assert meas["Object"].tolist() == lab["Object"].tolist() == list(range(1, len(cells) + 1))
        assert lab["cell_type"].tolist() == cells["cellType"].tolist()
        assert (lab["donor"] == cells["case"].to_numpy()).all()
        assert (lab["stage"] == cells["stage"].iloc[0]).all()
        # objects sit on their real centroids
        d = np.hypot(meas["x"].to_numpy() - cells["x"].to_numpy(), meas["y"].to_numpy() - cells["y"].to_numpy())
        assert np.median(d) < 1.0 and np.percentile(d, 99) < 4.0
        area = meas["area"].to_numpy()
        assert area.min() >= 1 and 35 <= np.median(area) <= 75  # real Damond masks: median 41-54 px


def test_type_means_follow_profile_table(sim_dir):
    """Per-type measured means ~ the committed table (times the stage effect), within the noise."""
    from spatial2sentence.measure import measure_cells

    profiles = sim.load_profiles()
    labels = pd.read_csv(sim_dir / "labels.csv")
    channels = pd.read_csv(sim_dir / "panel.csv")["name"].tolist()
    tabs = []
    for name in IMAGES:
        img = tifffile.imread(sim_dir / "img" / f"{name}.tiff")
        mask = tifffile.imread(sim_dir / "masks" / f"{name}.tiff")
        tabs.append(measure_cells(img, mask, channels))
    meas = pd.concat(tabs, ignore_index=True)
    meas["cell_type"] = labels["cell_type"].to_numpy()
    meas["stage"] = labels["stage"].to_numpy()
    meas = meas[meas["stage"] == "Non-diabetic"]  # no stage effect there
    means = meas.groupby("cell_type")[channels].mean()
    counts = meas["cell_type"].value_counts()
    ratios, checked = [], 0
    for t in ["acinar", "ductal", "alpha", "beta", "delta", "endothelial", "stromal"]:
        if counts.get(t, 0) < 30:
            continue
        exp = profiles.loc[t, channels]
        # the whole profile's marker ranking is kept
        rho = pd.Series(np.log(means.loc[t, channels].to_numpy())).corr(
            pd.Series(np.log(exp.to_numpy())), method="spearman")
        assert rho > 0.6, (t, rho)
        # identity markers (over 5x the cross-type median; low co-markers such as beta PCSK2
        # are dominated by spill from neighbours and are left to the ranking check)
        ident = exp[exp > 5 * profiles[channels].median()].index
        ratios.append((means.loc[t, ident] / exp[ident]).rename(lambda m, t=t: f"{t}:{m}"))
        checked += 1
    assert checked >= 4
    ratio = pd.concat(ratios)
    # Identity markers lose a shared share of their mean to systematic effects: the point spread
    # spills ~25-35 % of a small cell's signal out of its mask, and a quarter of cells are "weak"
    # (x0.02-0.25). Expected attenuation ~0.5-0.65; measured per type/marker it must stay within
    # a factor 1.8 of that shared level (per-image staining sd 0.15 and the regional staining
    # field, sd 0.5 over ~40-80 um, average out poorly over the few ducts/islets of two images).
    level = ratio.median()
    assert 0.4 < level < 0.8, level
    assert ((ratio / level > 1 / 1.8) & (ratio / level < 1.8)).all(), str(ratio.round(2).to_dict())
    # a type's identity marker is highest in its own type
    for t, mk in [("acinar", "AMY2A"), ("ductal", "KRT19"), ("alpha", "GCG"), ("beta", "INS"),
                  ("beta", "PIN"), ("delta", "SST")]:
        assert means[mk].idxmax() == t, (mk, means[mk].round(2).to_dict())


def test_stage_effect_only_on_beta_insulin(layouts):
    """Beta cells lose PIN/INS at onset; no other type/marker depends on stage."""
    profiles, panel = sim.load_profiles(), sim.load_panel()
    markers = panel["name"].tolist()
    params = sim.SimParams(weak_frac=0, ambiguous_frac=0, field_sigma=0, cycling_frac=0)
    n = 4000
    types = np.array(["beta"] * (n // 2) + ["acinar"] * (n // 2))
    x, y = np.arange(n, dtype=float), np.zeros(n)
    out = {}
    for stage in ("Non-diabetic", "Onset"):
        rng = np.random.default_rng(1)
        out[stage] = pd.DataFrame(sim.cell_expression(types, stage, x, y, profiles, markers, rng, params),
                                  columns=markers)
    ratio = out["Onset"] / out["Non-diabetic"]
    beta = types == "beta"
    changed = {m for m in markers if not np.allclose(ratio.loc[beta, m], 1.0)}
    assert changed == {"PIN", "INS", "IAPP"}
    assert np.allclose(ratio.loc[beta, "PIN"], 0.55)
    assert np.allclose(ratio.loc[~beta].to_numpy(), 1.0)


def test_render_mask_every_cell_gets_pixels_even_on_collision():
    x = np.array([5.0, 5.2, 5.0, 20.0])  # cells 1-3 round to the same pixel
    y = np.array([5.0, 4.9, 5.0, 20.0])
    mask, _ = sim.render_mask(x, y, np.full(4, 4.0), (30, 30))
    assert set(np.unique(mask)) == {0, 1, 2, 3, 4}
    assert mask[5, 5] == 1 and mask[20, 20] == 4
    assert (mask == 4).sum() == (np.hypot(*np.mgrid[-20:10, -20:10]) <= 4).sum()


def test_input_errors(tmp_path):
    from click.testing import CliRunner

    from spatial2sentence.cli import main

    with pytest.raises(S2SInputError, match="not found"):
        sim.load_layouts(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"imageID": ["a"], "x": [1.0], "y": [2.0], "cellType": ["beta"]}).to_csv(bad, index=False)
    with pytest.raises(S2SInputError, match=r"bad\.csv: missing column\(s\) case, stage"):
        sim.load_layouts(bad)
    pd.DataFrame({"imageID": ["a"], "x": [1.0], "y": [2.0], "cellType": ["pixie"], "case": [1],
                  "stage": ["Onset"]}).to_csv(bad, index=False)
    with pytest.raises(S2SInputError, match="unknown cell type"):
        sim.load_layouts(bad)
    runner = CliRunner()
    res = runner.invoke(main, ["simulate", "--layouts", str(LAYOUTS), "--out", str(tmp_path / "o"),
                               "--images", "C29,NOPE"])
    assert res.exit_code == 1
    assert "NOPE" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(main, ["simulate", "--layouts", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "x.csv: layout file not found" in res.output


def test_cli_simulate_runs(tmp_path):
    from click.testing import CliRunner

    from spatial2sentence.cli import main

    res = CliRunner().invoke(main, ["simulate", "--layouts", str(LAYOUTS), "--out", str(tmp_path),
                                    "--images", "S18", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "img" / "S18.tiff").exists() and "semi-synthetic" in res.output
