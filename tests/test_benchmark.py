"""``s2s benchmark`` on a table no fixture was made from: the real scimap CyCIF cells with renamed columns.

Tiny budget (1 seed, a few LM steps): this checks the plumbing, the JSON shape and that the classical
baselines beat chance (the majority class), not the language models' accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scimap_cycif"
METRICS = {"accuracy_mean", "accuracy_sd", "macro_f1_mean", "macro_f1_sd", "n_test_cells", "n_test_images"}


@pytest.fixture(scope="module")
def renamed_table(tmp_path_factory) -> Path:
    if not (DATA / "example_data.csv").exists():
        pytest.skip("scimap_cycif data not available")
    ad = pytest.importorskip("anndata")
    raw = pd.read_csv(DATA / "example_data.csv")
    obs = ad.read_h5ad(DATA / "example_data.h5ad").obs
    raw["gated"] = obs["phenotype"].astype(str).to_numpy()  # same cells, same order (checked by the loader)
    keep = ["CD3D", "CD4", "CD8A", "CD20", "CD45", "CD30", "CD68", "CD163", "ASMA", "KI67", "FOXP3", "CD11C"]
    df = raw[["X_position", "Y_position", *keep, "gated"]].rename(
        columns={"X_position": "col_um", "Y_position": "row_um", "gated": "truth",
                 **{k: f"ch_{k.lower()}_mean" for k in keep}})
    df["donor_free_text"] = "patient A"  # a non-numeric column that must be ignored
    # a smaller crop keeps the test fast; still one image, so it is split into 4 strips
    df = df[df["row_um"] < np.quantile(df["row_um"], 0.5)].reset_index(drop=True)
    path = tmp_path_factory.mktemp("bench") / "my_cells.csv"
    df.to_csv(path, index=False)
    return path


def test_benchmark_any_table(renamed_table, tmp_path):
    from spatial2sentence.cli import main

    out = tmp_path / "res"
    r = CliRunner().invoke(main, [
        "benchmark", "--table", str(renamed_table), "--x-col", "col_um", "--y-col", "row_um",
        "--label-col", "truth", "--seeds", "1", "--steps", "8", "--batch-size", "16", "--workers", "1", "--out", str(out),
    ])
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads((out / "accuracy.json").read_text())
    assert set(res) == {"cell_type", "_meta"}
    expected = {"s2s", "c2s", "s2s_no_negatives", "s2s_no_positives", "s2s_no_aux",
                "logreg", "logreg_neighbors", "hgb_neighbors"}
    assert set(res["cell_type"]) == expected
    df = pd.read_csv(renamed_table)
    for m, v in res["cell_type"].items():
        assert METRICS <= set(v), m
        assert 0 <= v["accuracy_mean"] <= 1 and 0 <= v["macro_f1_mean"] <= 1
        assert v["n_test_cells"] == len(df)  # every cell tested once (4 strips, leave one out)
        assert v["n_test_images"] == 4
    assert len(res["_meta"]["markers"]) == 12
    assert "one image" in res["_meta"]["split"]
    chance = df["truth"].value_counts(normalize=True).iloc[0]
    for m in ("logreg", "logreg_neighbors", "hgb_neighbors"):
        assert res["cell_type"][m]["accuracy_mean"] > chance + 0.1, (m, res["cell_type"][m], chance)
    md = (out / "accuracy.md").read_text()
    assert "s2s − c2s" in md and "| logreg |" in md


def test_folds_keep_every_stage_and_never_split_groups():
    from spatial2sentence.benchmark import Dataset, make_folds

    rng = np.random.default_rng(0)
    rows = []
    for d in range(12):
        for im in range(3):
            for c in range(5):
                rows.append({"image": f"d{d}i{im}", "Object": c, "x": rng.random(), "y": rng.random(),
                             "cell_type": "a", "stage": ["ND", "On", "LD"][d % 3], "donor": f"d{d}"})
    ds = Dataset("t", pd.DataFrame(rows), [], "t", phenotype_only=True, cell_type=False, clinical=True)
    for seed in range(3):
        folds = make_folds(ds, seed)
        assert len(folds) == 4
        assert sorted(g for f in folds for g in f) == sorted(f"d{d}" for d in range(12))
        for f in folds:
            assert sorted(int(g[1:]) % 3 for g in f) == [0, 1, 2]  # one donor of each stage per fold
