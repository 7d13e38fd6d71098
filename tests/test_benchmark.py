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

from conftest import SCIMAP as DATA  # noqa: E402
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
    # no clinical column: s2s_no_tissue would only repeat s2s and is not run
    expected = {"s2s", "c2s", "c2s_ranked", "s2s_ranked", "s2s_no_values", "s2s_no_neighbourhood",
                "s2s_no_negatives", "s2s_no_positives", "s2s_no_aux", "s2s_token_positions", "s2s_select", "logreg",
                "logreg_neighbors", "hgb_neighbors"}
    assert set(res["cell_type"]) == expected
    # s2s_select kept one of its two sentences on each of the 4 strips, and the report says which
    kept = res["_meta"]["lm_selected"]
    assert set(kept) <= {"s2s_select: s2s", "s2s_select: s2s_ranked"} and sum(kept.values()) == 4
    # 4 strips x 10 trainings: s2s_select reuses the s2s and s2s_ranked trained on the same strip
    assert res["_meta"]["n_lm_trainings"] == 4 * 10
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
    assert "s2s − c2s_ranked (Cell2Sentence as published)" in md
    assert "s2s − c2s" in md and "| logreg |" in md and "- kept by validation: s2s_select: " in md


def test_s2s_select_keeps_the_candidate_with_the_better_validation_score(monkeypatch, tmp_path):
    """run_lm of a selecting method trains every candidate and returns the predictions of the one whose
    kept state scored best on validation; it reports each training it ran, and reuses a candidate that
    the same fold already trained."""
    from spatial2sentence.bench import runner

    scores = {"s2s": 0.61, "s2s_ranked": 0.74, "c2s": 0.5}
    trained = []

    def fake(method, *args):  # (method, ds, train_df, test_df, test_idx, budget, seed, labels..., workdir)
        trained.append((method, Path(args[-1]).name))
        probs = np.full((3, 2), 0.5)
        probs[:, int(method == "s2s_ranked")] = 0.9
        return {"cell_type": probs}, (10.0, 100, 50 + len(trained)), scores[method]

    def select(fold_cache=None):
        return runner.run_lm("s2s_select", None, None, None, None, None, 0, ["a", "b"], [], tmp_path / "w",
                             fold_cache)

    monkeypatch.setattr(runner, "_train_and_predict", fake)
    out, stats = select()
    assert trained == [("s2s", "s2s"), ("s2s_ranked", "s2s_ranked")]  # each in its own folder
    assert out["cell_type"][:, 1].tolist() == [0.9] * 3  # the ranked candidate's probabilities
    assert stats == ([(10.0, 100, 51), (10.0, 100, 52)], "s2s_select: s2s_ranked")
    scores["s2s"] = 0.80
    trained.clear()
    out, stats = select()
    assert out["cell_type"][:, 0].tolist() == [0.9] * 3 and stats[1] == "s2s_select: s2s"
    # a plain method trains once and records no choice
    trained.clear()
    _, stats = runner.run_lm("c2s", None, None, None, None, None, 0, ["a", "b"], [], tmp_path / "c")
    assert trained == [("c2s", "c")] and stats == ([(10.0, 100, 51)], None)
    # within one fold, s2s trained first: s2s_select trains only the other candidate and still compares both
    trained.clear()
    fold_cache = {}
    runner.run_lm("s2s", None, None, None, None, None, 0, ["a", "b"], [], tmp_path / "s", fold_cache)
    out, stats = select(fold_cache)
    assert trained == [("s2s", "s"), ("s2s_ranked", "s2s_ranked")]
    assert stats == ([(10.0, 100, 52)], "s2s_select: s2s") and out["cell_type"][:, 0].tolist() == [0.9] * 3


def test_folds_keep_every_stage_and_never_split_groups():
    from spatial2sentence.bench.datasets import Dataset
    from spatial2sentence.bench.runner import make_folds

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


def test_a_run_of_one_dataset_keeps_the_other_datasets_rows(tmp_path):
    """write_results merges: rerunning one built-in dataset replaces its rows and keeps the others, each
    with the budget and command of the run it came from."""
    from spatial2sentence.bench.methods import Budget
    from spatial2sentence.bench.report import write_results

    def res(acc, name):
        r = {"accuracy_mean": acc, "accuracy_sd": 0.0, "macro_f1_mean": acc, "macro_f1_sd": 0.0,
             "n_test_cells": 10, "n_test_images": 2, "n_seeds": 1}
        return {"cell_type": {"s2s": r, "logreg": r}, "_meta": {"dataset": name, "description": name}}

    old_budget, new_budget = Budget(steps=800), Budget(steps=3000, encoding="levels")
    write_results(tmp_path, {"damond_pancreas_toy": res(0.5, "toy"), "scimap_cycif": res(0.6, "cycif")},
                  old_budget, "s2s benchmark --datasets all", 10.0, single=False)
    write_results(tmp_path, {"scimap_cycif": res(0.7, "cycif")}, new_budget,
                  "s2s benchmark --datasets scimap_cycif", 5.0, single=False)
    js = json.loads((tmp_path / "accuracy.json").read_text())
    assert list(k for k in js if k != "_meta") == ["damond_pancreas_toy", "scimap_cycif"]
    assert js["scimap_cycif"]["cell_type"]["s2s"]["accuracy_mean"] == 0.7
    assert js["damond_pancreas_toy"]["cell_type"]["s2s"]["accuracy_mean"] == 0.5
    assert js["damond_pancreas_toy"]["_meta"]["kept"] and js["damond_pancreas_toy"]["_meta"]["run"]["budget"]["steps"] == 800
    assert js["scimap_cycif"]["_meta"]["run"]["budget"]["steps"] == 3000 and not js["scimap_cycif"]["_meta"].get("kept")
    md = (tmp_path / "accuracy.md").read_text()
    assert "### damond_pancreas_toy (kept from an earlier run)" in md and "### scimap_cycif\n" in md
    assert "| s2s | 70.0 ± 0.0" in md and "| s2s | 50.0 ± 0.0" in md
    # a third run of the kept dataset keeps the second run's rows of the other
    write_results(tmp_path, {"damond_pancreas_toy": res(0.9, "toy")}, new_budget, "again", 1.0, single=False)
    js = json.loads((tmp_path / "accuracy.json").read_text())
    assert js["scimap_cycif"]["cell_type"]["s2s"]["accuracy_mean"] == 0.7
    assert js["scimap_cycif"]["_meta"]["run"]["command"] == "s2s benchmark --datasets scimap_cycif"


def test_a_run_of_some_methods_takes_the_others_from_earlier_runs_with_the_same_budget(tmp_path):
    """merge_methods: the methods a run did not do come from earlier runs of the same dataset whose budget
    is the same (thread and process counts aside; keys added later read as the value every earlier run
    used), each with the command it came from, kept through rewrites; a run with another budget or of
    another dataset is not merged, and the log says why."""
    from spatial2sentence.bench.methods import Budget
    from spatial2sentence.bench import report
    from spatial2sentence.bench.report import source_commit, write_results

    def res(accs, n_cells=3029, wall_s=1.0):
        return {"cell_type": {m: {"accuracy_mean": a, "accuracy_sd": 0.0, "macro_f1_mean": a, "macro_f1_sd": 0.0,
                                  "n_test_cells": 10, "n_test_images": 2, "n_seeds": 3} for m, a in accs.items()},
                "_meta": {"dataset": "scimap_cycif", "description": "c", "n_cells": n_cells, "n_images": 4,
                          "markers": ["CD3", "CD20"], "wall_s": wall_s}}

    budget = Budget()
    earlier = tmp_path / "earlier"
    write_results(earlier, {"scimap_cycif": res({"s2s": 0.75, "c2s": 0.76}, wall_s=100.0)}, Budget(workers=1), "run A", 100.0,
                  single=False)
    # a run committed before the keys added since (weight_decay, value_noise, tissue_types...) whose
    # earlier value is today's default
    legacy = tmp_path / "legacy"
    write_results(legacy, {"scimap_cycif": res({"s2s_ranked": 0.70})}, budget, "run L", 50.0, single=False)
    js = json.loads((legacy / "accuracy.json").read_text())
    absent = [k for k, v in report.BUDGET_KEYS_ADDED.items() if getattr(budget, k) == v]
    assert {"weight_decay", "value_noise", "tissue_types"} <= set(absent)
    for b in (js["scimap_cycif"]["_meta"]["run"]["budget"], js["_meta"]["budget"]):
        for k in absent:
            del b[k]
    (legacy / "accuracy.json").write_text(json.dumps(js))
    other = tmp_path / "other"  # another budget
    write_results(other, {"scimap_cycif": res({"s2s_no_aux": 0.9})}, Budget(init_std=0.02), "run O", 1.0, single=False)
    smaller = tmp_path / "smaller"  # another dataset of the same name
    write_results(smaller, {"scimap_cycif": res({"s2s_no_positives": 0.9}, 300)}, budget, "run S", 1.0, single=False)

    out, said = tmp_path / "out", []
    this_run = {"scimap_cycif": res({"logreg": 0.777, "s2s": 0.5})}
    for _ in range(2):  # the runner writes the same results after each dataset and at the end
        write_results(out, this_run, budget, "run B", 10.0, single=False, merge=[earlier, legacy, other, smaller],
                      log=said.append)
    assert set(this_run["scimap_cycif"]["cell_type"]) == {"logreg", "s2s"}  # the run's own results untouched
    ct = json.loads((out / "accuracy.json").read_text())["scimap_cycif"]
    assert ct["cell_type"]["s2s"]["accuracy_mean"] == 0.5  # this run's own result wins
    assert ct["cell_type"]["c2s"]["accuracy_mean"] == 0.76 and ct["cell_type"]["s2s_ranked"]["accuracy_mean"] == 0.70
    assert "s2s_no_aux" not in ct["cell_type"] and "s2s_no_positives" not in ct["cell_type"]
    assert [(m["methods"], m["command"]) for m in ct["_meta"]["merged"]] == [(["c2s"], "run A"), (["s2s_ranked"], "run L")]
    assert any("not merging s2s_no_aux" in line and "budget differs in init_std" in line for line in said)
    assert any("not merging s2s_no_positives" in line and "a different dataset" in line for line in said)
    md = (out / "accuracy.md").read_text()
    # each merged row names the code it ran (the git commit of the source, as here: one checkout)
    commit = source_commit()
    assert bool(commit) == (Path(report.__file__).resolve().parents[3] / ".git").exists()
    assert all(m.get("commit", "") == commit for m in ct["_meta"]["merged"])
    at = f" at {commit}" if commit else ""
    assert f"- c2s: from an earlier run with the same budget, `run A`{at} (100.0 s)" in md
    assert "| c2s | 76.0 ± 0.0" in md and "| s2s | 50.0 ± 0.0" in md
    assert "s2s − c2s = -26.0 points" in md
    # a later composition naming a rerun of c2s takes it over the row ``out`` already holds
    rerun = tmp_path / "rerun"
    write_results(rerun, {"scimap_cycif": res({"c2s": 0.8})}, budget, "run R", 5.0, single=False)
    write_results(out, {"scimap_cycif": res({"logreg": 0.777})}, budget, "run C", 1.0, single=False, merge=[rerun],
                  log=said.append)
    ct = json.loads((out / "accuracy.json").read_text())["scimap_cycif"]
    assert ct["cell_type"]["c2s"]["accuracy_mean"] == 0.8
    assert ct["cell_type"]["s2s"]["accuracy_mean"] == 0.5 and ct["cell_type"]["s2s_ranked"]["accuracy_mean"] == 0.70
    assert [(m["methods"], m["command"]) for m in ct["_meta"]["merged"]] == \
        [(["c2s"], "run R"), (["s2s"], "run B"), (["s2s_ranked"], "run L")]


def test_validation_rule_never_uses_test_groups_and_splits_few_images_by_block():
    from spatial2sentence.bench.methods import Budget, lm_settings, val_rule
    from spatial2sentence.training_data import split_blocks

    rng = np.random.default_rng(0)
    few = pd.DataFrame({"image": np.repeat(["a", "b"], 50), "x": rng.uniform(0, 100, 100)})
    many = pd.DataFrame({"image": np.repeat(list("abcdef"), 10), "x": rng.uniform(0, 100, 60)})
    assert val_rule(few) == "blocks" and val_rule(many) == "images"
    val = split_blocks(few["image"].to_numpy(), few["x"].to_numpy(), 0.2)
    for im in ("a", "b"):  # the right-most fifth of each image, a spatial block
        sel = few["image"].to_numpy() == im
        assert 0.15 <= val[sel].mean() <= 0.25
        assert few["x"].to_numpy()[sel & val].min() > few["x"].to_numpy()[sel & ~val].max()
    s, _, _, _, ts = lm_settings("s2s", Budget(), 0)
    assert s.encoding == "values" and s.values and ts.val_fraction > 0 and ts.select_by == "accuracy"
    assert ts.patience < 100
    assert lm_settings("s2s_ranked", Budget(), 0)[0].encoding == "ranked"
    assert lm_settings("c2s", Budget(), 0)[0] == s
    # the paper's baseline: Cell2Sentence's ranked words, one cell, no pair task
    c2s_ranked = lm_settings("c2s_ranked", Budget(), 0)
    assert c2s_ranked[0] == lm_settings("s2s_ranked", Budget(), 0)[0] and not c2s_ranked[0].values
    assert c2s_ranked[2].format == "single" and "pair" not in c2s_ranked[4].task_mix
    assert c2s_ranked[3].attention == "causal"
    # the tissue prompts' composition reaches s2s's prompts (c2s has no tissue prompt to carry it)
    assert lm_settings("s2s", Budget(tissue_types=True), 0)[2].tissue_types
    assert not lm_settings("s2s", Budget(), 0)[2].tissue_types
    assert not lm_settings("c2s", Budget(tissue_types=True), 0)[2].tissue
    # regularisation the budget sets reaches every language model's training settings
    for method in ("s2s", "c2s", "s2s_ranked", "s2s_no_values", "c2s_ranked"):
        sent, *_, ms, ts = lm_settings(method, Budget(weight_decay=0.2, value_noise=0.05, attention="prefix"), 0)
        assert (ts.weight_decay, ts.value_noise) == (0.2, 0.05)
        # sentences whose words' order is their only level stay causal (one position per line would
        # make a line read both ways a bag of words)
        assert sent.order_is_level() == (method in ("s2s_ranked", "s2s_no_values", "c2s_ranked"))
        assert ms.attention == ("causal" if sent.order_is_level() else "prefix")


def test_budget_option_sets_fields_and_refuses_unknown_ones(tmp_path):
    """``--budget KEY=VALUE`` converts to the field's type; a wrong key or value is a clear message, not a
    traceback, before any data is read."""
    from spatial2sentence.bench.methods import Budget
    from spatial2sentence.cli import main
    from spatial2sentence.commands.benchmark import parse_budget_item

    b = Budget()
    assert parse_budget_item("refit=true", b) == ("refit", True)
    assert parse_budget_item("anchor_alone=0.3", b) == ("anchor_alone", 0.3)
    assert parse_budget_item(" steps = 120 ", b) == ("steps", 120)
    assert parse_budget_item("test_cells_per_image=none", b) == ("test_cells_per_image", None)
    r = CliRunner().invoke(main, ["benchmark", "--table", __file__, "--merge", str(tmp_path), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "not with --table" in r.output and "Traceback" not in r.output
    for bad, says in (("refit=maybe", "not a valid bool"), ("steps=1.5", "not a valid int"),
                      ("nonsense=1", "KEY one of"), ("steps", "KEY=VALUE")):
        r = CliRunner().invoke(main, ["benchmark", "--datasets", "scimap_cycif", "--budget", bad,
                                      "--out", str(tmp_path / "x")])
        assert r.exit_code != 0 and says in r.output and "Traceback" not in r.output, (bad, r.output)
        assert not (tmp_path / "x").exists()


def test_probes_train_and_read_a_fold_the_benchmark_way(tmp_path):
    """fold_splits and train_lm, the benchmark's folds and training for probe scripts: test images never
    in training, every image tested once per seed, and a trained model whose type probabilities
    align_labels puts in any label order (a label the model never saw: 0)."""
    from spatial2sentence.bench.datasets import Dataset
    from spatial2sentence.bench.methods import Budget
    from spatial2sentence.bench.runner import align_labels, fold_splits, lm_predict, lm_table, train_lm

    rng = np.random.default_rng(3)
    rows = []
    for im in range(4):
        for c in range(60):
            kind = c % 2
            rows.append({"image": f"img{im}", "Object": c + 1, "x": rng.random() * 100, "y": rng.random() * 100,
                         "CD3": 5.0 * kind + rng.random(), "CD20": 5.0 * (1 - kind) + rng.random(),
                         "cell_type": ["B cell", "T cell"][kind]})
    ds = Dataset("gen", pd.DataFrame(rows), ["CD3", "CD20"], "generated")
    budget = Budget(seeds=2, steps=4, batch_size=8, eval_every=2, eval_prompts=16, workers=1)
    splits = list(fold_splits(ds, budget))
    assert len(splits) == 2 * 4
    for seed in range(2):
        tested = [set(te["image"]) for s, _f, _nf, _tr, te, _idx in splits if s == seed]
        assert sorted(im for t in tested for im in t) == [f"img{i}" for i in range(4)]
    seed, _f, _nf, train_df, test_df, idx = splits[0]
    assert not set(train_df["image"]) & set(test_df["image"]) and idx.max() < len(test_df)
    res = train_lm("c2s", ds, train_df, budget, seed, tmp_path / "wd", type_labels=["B cell", "T cell"])
    assert res.steps_done <= 4 and list(res.model.type_labels) == ["B cell", "T cell"]
    probs = lm_predict(res.model, lm_table(test_df, ds, False), idx, ["type"])["type"]
    want = ["T cell", "NK cell", "B cell"]
    aligned = align_labels(probs, res.model.type_labels, want)
    assert np.allclose(aligned[:, 0], probs[:, 1]) and np.allclose(aligned[:, 2], probs[:, 0])
    assert (aligned[:, 1] == 0).all() and np.allclose(aligned.sum(1), 1, atol=1e-5)
