"""Any panel, any tissue: the domain guard, cells without signal, tables and AnnData in and out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from spatial2sentence.cli import main
from spatial2sentence.domain import PanelCoverageError, panel_coverage
from spatial2sentence.model import DEFAULT_MODEL_DIR, S2SModel

from conftest import DAMOND_TOY as TOY  # noqa: E402
from conftest import SCIMAP  # noqa: E402
# the MCMICRO CyCIF panel of the issue: 9 markers, 4 of them in the Damond panel
CYCIF_9 = ["ELANE", "CD57", "CD45", "CD11B", "SMA", "CD16", "ECAD", "FOXP3", "NCAM"]


@pytest.fixture(scope="module")
def default_model():
    return S2SModel.from_pretrained(None, device="cpu")


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def test_coverage_counts_aliases_and_leaves_nuclear_stains_out():
    cov = panel_coverage(["DNA1", "H3", "CD8A", "CDH1", "INS"], ["dna1", "CD8a", "E-cadherin", "FOO"])
    assert cov.present == ["CD8A", "CDH1"] and cov.missing == ["INS"] and cov.unknown == ["dna1", "FOO"]
    assert cov.fraction == pytest.approx(2 / 3)


@pytest.mark.parametrize("panel,ok", [
    (["CD99"], False),                                  # 1 of the model's markers
    (CYCIF_9, False),                                   # another tissue's panel sharing 4
    (["H3", "CD99", "PIN", "CD8a", "CDH"], False),      # the real toy crops' 5 markers
    (["INS", "GCG", "SST", "AMY2A", "KRT19", "CD45", "CD31", "SMA", "CD68", "CD3"], True),
])
def test_default_model_guard_measures_the_panel_on_its_check_cells(default_model, panel, ok):
    cov = default_model.panel_coverage(panel)
    assert cov.ok is ok, cov.check
    assert cov.check is not None and cov.check["n_cells"] >= 1000
    assert cov.check["majority"] < cov.check["required"] < cov.check["full"]
    if not ok:
        assert "model markers present" in cov.refusal() and "train a model" in cov.refusal().lower()


def test_cli_annotate_refuses_the_toy_panel_per_image_and_names_each_image_file(tmp_path):
    code, out = run("annotate", TOY, "-o", tmp_path / "out")
    assert code == 1, out
    errors = pd.read_csv(tmp_path / "out" / "errors.csv").set_index("image")
    assert sorted(errors.index) == sorted(p.stem for p in (TOY / "img").glob("*.tiff"))
    for image, row in errors.iterrows():
        assert Path(row["file"]) == TOY / "img" / f"{image}.tiff"
        assert "model markers present" in row["reason"]
        assert f"error: {image}: {TOY / 'img' / image}.tiff: " in out  # the image named once, then its file


def test_full_panel_needs_no_check(default_model):
    cov = default_model.panel_coverage(list(default_model.markers))
    assert cov.ok and cov.check is None and cov.fraction == 1.0


def test_cli_predict_refuses_the_toy_panel_and_allows_it_on_request(tmp_path):
    args = ["predict", TOY / "img" / "G01.tiff", TOY / "masks" / "G01.tiff", "--panel", TOY / "panel.csv",
            "-o", tmp_path / "p.csv"]
    code, out = run(*args)
    assert code == 1 and "4 of 34 model markers present" in out and "--allow-partial-panel" in out
    assert not (tmp_path / "p.csv").exists()
    code, out = run(*args, "--allow-partial-panel")
    assert code == 0, out
    status = json.loads((tmp_path / "p.status.json").read_text())
    assert status["panel_coverage"]["ok"] is False and status["panel_coverage"]["check"]["accuracy"] < 0.6
    assert "PARTIAL" in out


def test_cells_without_signal_are_unknown_not_the_majority_type(default_model):
    rng = np.random.default_rng(0)
    n = 60
    cells = pd.DataFrame({"Object": np.arange(1, n + 1), "x": rng.uniform(0, 200, n), "y": rng.uniform(0, 200, n)})
    for m in default_model.markers:
        cells[m] = rng.gamma(2.0, 1.0, n)
    cells.loc[:9, default_model.markers] = 0.0  # ten cells with no signal in any marker
    pred = default_model.predict_cells(cells).cells
    assert pred["no_signal"].iloc[:10].all() and not pred["no_signal"].iloc[10:].any()
    assert (pred["cell_type"].iloc[:10] == "unknown").all()
    assert pred["cell_type_probability"].iloc[:10].isna().all()


def test_status_confidence_follows_the_margin(default_model):
    from spatial2sentence.domain import DEFAULT_STATUS_MARGIN, status_is_confident

    assert not status_is_confident(1 / 3 + DEFAULT_STATUS_MARGIN - 0.01, 3)
    assert status_is_confident(1 / 3 + DEFAULT_STATUS_MARGIN + 0.01, 3)
    cells = pd.read_csv(DEFAULT_MODEL_DIR / "panel_check.csv.gz")
    one = cells[cells["image"] == cells["image"].iloc[0]].drop(columns=["cell_type"])
    st = default_model.predict_cells(one).image_status.iloc[0]
    assert st["status_confident"] == status_is_confident(st["status_probability"], 3)


# ------------------------------------------------------------------------------------- tables and AnnData
def _generated_table(path: Path, n_per_class=60, seed=0) -> pd.DataFrame:
    """Two images of three classes with distinct marker profiles (MCMICRO column names)."""
    rng = np.random.default_rng(seed)
    rows = []
    profiles = {"T": [8, 1, 1], "B": [1, 8, 1], "tumour": [1, 1, 8]}
    cid = 0
    for image in ("s1", "s2"):
        for k, (label, prof) in enumerate(profiles.items()):
            for _ in range(n_per_class):
                cid += 1
                rows.append({"CellID": cid, "X_centroid": rng.uniform(0, 300) + 400 * k,
                             "Y_centroid": rng.uniform(0, 300), "sample": image, "celltype": label,
                             **{m: rng.gamma(2.0, v) for m, v in zip(("CD3", "CD20", "KRT"), prof)}})
    df = pd.DataFrame(rows)
    df.to_csv(path, index=False)
    return df


def test_train_and_predict_from_a_csv_table(tmp_path):
    table = tmp_path / "cells.csv"
    df = _generated_table(table)
    code, out = run("train", "--table", table, "--image-col", "sample", "--label-col", "celltype",
                    "--out", tmp_path / "m", "--steps", "60", "--threads", "1")
    assert code == 0, out
    meta = json.loads((tmp_path / "m" / "s2s_config.json").read_text())
    assert sorted(meta["type_labels"]) == ["B", "T", "tumour"] and meta["status_labels"] == []
    code, out = run("predict", "--table", table, "--image-col", "sample", "--model", tmp_path / "m",
                    "-o", tmp_path / "p.csv")
    assert code == 0, out
    pred = pd.read_csv(tmp_path / "p.csv")
    assert len(pred) == len(df) and set(pred["image"]) == {"s1", "s2"}
    assert (pred["Object"].to_numpy() == df["CellID"].to_numpy()).all()
    acc = float(np.mean(pred["cell_type"].to_numpy() == df["celltype"].to_numpy()))
    assert acc > 0.8  # three well-separated profiles


def test_table_errors_name_the_column(tmp_path):
    table = tmp_path / "cells.csv"
    _generated_table(table)
    code, out = run("predict", "--table", table, "--x-col", "nope", "-o", tmp_path / "p.csv")
    assert code == 1 and "no column 'nope'" in out
    code, out = run("train", "--table", table, "--out", tmp_path / "m")
    assert code == 1 and "--label-col" in out


def _scimap_adata():
    """The real scimap CyCIF cells as an AnnData: raw means of its 33 markers in X (DNA and background
    channels left out), positions in obsm['spatial'], the gated phenotype in obs."""
    import anndata as ad

    df = pd.read_csv(SCIMAP / "example_data.csv")
    cols = list(df.columns[1:list(df.columns).index("X_position")])
    markers = [c for c in cols if not c.startswith(("DNA", "BG"))]
    obs = pd.DataFrame({"ImageId": "230", "CellID": df["CellID"].astype(str).to_numpy()},
                       index=df["CellID"].astype(str).to_numpy())
    adata = ad.AnnData(df[markers].to_numpy(np.float32), obs=obs)
    adata.var_names = markers
    adata.obsm["spatial"] = df[["X_position", "Y_position"]].to_numpy()
    return adata


def test_h5ad_table_predict_writes_obs_and_model_predict_adata(tmp_path, default_model):
    adata = _scimap_adata()
    src = tmp_path / "cycif.h5ad"
    adata.write_h5ad(src)
    code, out = run("predict", "--table", src, "-o", tmp_path / "p.h5ad")
    assert code == 1 and "model markers present" in out  # another tissue's panel: refused
    code, out = run("predict", "--table", src, "-o", tmp_path / "p.h5ad", "--allow-partial-panel")
    assert code == 0, out
    import anndata as ad

    res = ad.read_h5ad(tmp_path / "p.h5ad")
    assert res.n_obs == adata.n_obs and "s2s_cell_type" in res.obs
    assert res.obsm["s2s_type_probabilities"].shape == (adata.n_obs, len(default_model.type_labels))
    # the Python API, scverse style
    with pytest.raises(PanelCoverageError):
        default_model.predict(adata)
    out = default_model.predict(adata, copy=True, allow_partial_panel=True, tasks=("type",))
    assert "s2s_cell_type" not in adata.obs and out.obs["s2s_cell_type"].notna().all()
    p = out.obsm["s2s_type_probabilities"]
    assert np.allclose(np.nansum(p, 1)[~out.obs["s2s_no_signal"].to_numpy()], 1.0, atol=1e-4)
    assert out.uns["s2s"]["coverage"]["ok"] is False


def test_fit_adata_then_predict(tmp_path):
    import anndata as ad

    df = _generated_table(tmp_path / "cells.csv", n_per_class=40)
    adata = ad.AnnData(df[["CD3", "CD20", "KRT"]].to_numpy(np.float32),
                       obs=df[["sample", "celltype"]].astype(str).set_index(df["CellID"].astype(str)))
    adata.obsm["spatial"] = df[["X_centroid", "Y_centroid"]].to_numpy()
    from spatial2sentence.settings import TrainSettings
    from spatial2sentence.training import fit_anndata

    model = fit_anndata(adata, label_key="celltype", image_key="sample", out=tmp_path / "fit",
                        train_settings=TrainSettings(steps=60, batch_size=32, eval_every=30, num_threads=1),
                        progress_bar=False, log=lambda *a: None)
    assert (tmp_path / "fit" / "s2s_config.json").exists()
    out = model.predict(adata, image_key="sample", copy=True)
    acc = float(np.mean(out.obs["s2s_cell_type"].astype(str).to_numpy() == adata.obs["celltype"].to_numpy()))
    assert acc > 0.8


def test_bundled_model_folder_ships_its_check_cells():
    cells = pd.read_csv(DEFAULT_MODEL_DIR / "panel_check.csv.gz")
    assert {"image", "Object", "x", "y", "cell_type"} <= set(cells.columns) and len(cells) >= 1000
    # images of the 3 donors the model never saw (benchmarks/coverage.py HELD_OUT_IMAGES)
    assert set(cells["image"]) == {"E17", "E32", "G32", "H16", "J07", "K09"}


def test_temperature_scaling_recovers_a_known_temperature_and_keeps_the_calls():
    from spatial2sentence.domain import apply_temperature, fit_temperature, reliability

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 5))
    true_p = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum(1, keepdims=True)  # the truth is T = 2
    y = np.array([rng.choice(5, p=row) for row in true_p])
    raw = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # over-confident
    t = fit_temperature(raw, y)
    assert 1.7 < t < 2.3
    cal = apply_temperature(raw, t)
    assert (cal.argmax(1) == raw.argmax(1)).all() and np.allclose(cal.sum(1), 1.0)
    assert reliability(cal, y)[0] < reliability(raw, y)[0]
    nan_row = np.array([[np.nan, np.nan]])
    assert np.isnan(apply_temperature(nan_row, 2.0)).all()


def test_default_model_applies_its_stored_temperature(default_model):
    t = default_model.calibration.get("type_temperature")
    assert t is not None and t > 0 and default_model.calibration["ece_after"] <= default_model.calibration["ece_before"]
    cells = pd.read_csv(DEFAULT_MODEL_DIR / "panel_check.csv.gz").head(150).drop(columns=["cell_type"])
    cal = default_model.predict_cells(cells, tasks=("type",)).cells
    default_model.calibration, saved = {}, default_model.calibration
    try:
        raw = default_model.predict_cells(cells, tasks=("type",)).cells
    finally:
        default_model.calibration = saved
    cols = [c for c in cal.columns if c.startswith("p_")]
    from spatial2sentence.domain import apply_temperature

    np.testing.assert_allclose(cal[cols].to_numpy(), apply_temperature(raw[cols].to_numpy(), t), atol=1e-6)
    assert (cal["cell_type"] == raw["cell_type"]).all()
