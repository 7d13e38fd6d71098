"""Token attributions (integrated gradients) of the Spatial2Sentence model: structure, completeness,
batching, agreement with captum, a toy model whose only class difference is one marker, and the CLI.

A tiny model is trained once per session (a few seconds) on a toy table: classes ``x`` and ``y`` are
identical except that ``x`` cells express PIN; ``z`` cells express GCG and SST; H3, CD99 and CDH are
shared by all.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

MARKERS = ("H3", "CD99", "CDH", "PIN", "GCG", "SST")


def toy_expression(ct: np.ndarray, rng) -> dict:
    n = len(ct)
    low = lambda: rng.gamma(2, 0.3, size=n)  # noqa: E731
    out = {m: rng.gamma(20, 0.5, size=n) for m in ("H3", "CD99", "CDH")}
    out["PIN"] = np.where(ct == "x", rng.gamma(30, 1.0, size=n), low())
    out["GCG"] = np.where(ct == "z", rng.gamma(30, 1.0, size=n), low())
    out["SST"] = np.where(ct == "z", rng.gamma(20, 1.0, size=n), low())
    return out


def toy_table(seed: int = 0, n_images: int = 4, n_cells: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tables = []
    for im in range(n_images):
        ct = rng.choice(["x", "y", "z"], size=n_cells, p=[0.35, 0.35, 0.3])
        xy = rng.uniform(0, 220, size=(n_cells, 2))
        tables.append(pd.DataFrame({
            "image": f"im{im}", "Object": np.arange(1, n_cells + 1), "x": xy[:, 0], "y": xy[:, 1],
            **toy_expression(ct, rng), "cell_type": ct, "stage": "A" if im % 2 else "B",
        }))
    return pd.concat(tables, ignore_index=True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A small model numbering its prompts by line (v2): explanations must read the positions prediction
    reads (test_structure compares their probabilities)."""
    from spatial2sentence.model import S2SModel
    from spatial2sentence.settings import ModelSettings, TrainSettings
    from spatial2sentence.training import train

    out = tmp_path_factory.mktemp("tiny_explain_model")
    threads = torch.get_num_threads()
    train(toy_table(), out,
          model_settings=ModelSettings(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                       max_positions=64, positions="lines"),
          train_settings=TrainSettings(steps=300, batch_size=32, lr=5e-3, warmup_steps=20, eval_every=100,
                                       eval_prompts=200, task_mix={"type": 0.9, "pair": 0.1},
                                       panel_subset_prob=0.0, checkpoint_every=10_000, num_threads=1,
                                       patience=100),
          progress_bar=False, log=lambda *a: None)
    torch.set_num_threads(threads)
    return S2SModel.from_pretrained(out, device="cpu"), out


@pytest.fixture(scope="session")
def toy_cells():
    return toy_table(seed=5, n_images=1, n_cells=90)


@pytest.fixture(scope="session")
def toy_explanations(tiny_model, toy_cells):
    from spatial2sentence.explain import explain_cells

    model, _ = tiny_model
    return explain_cells(model, toy_cells, None, internal_batch_size=512)


def test_structure(tiny_model, toy_cells, toy_explanations):
    model, _ = tiny_model
    pred = model.predict_cells(toy_cells, tasks=("type",)).cells.set_index("Object")
    assert len(toy_explanations) == len(toy_cells)
    for e in toy_explanations[:20]:
        assert {"object", "predicted", "target", "probabilities", "tokens", "markers", "partners", "baseline",
                "n_steps", "completeness_error"} <= set(e)
        assert set(e["probabilities"]) == set(model.type_labels)
        assert abs(sum(e["probabilities"].values()) - 1) < 1e-5
        assert e["target"] == e["predicted"] == pred.loc[e["object"], "cell_type"]
        assert abs(e["probabilities"][e["predicted"]] - pred.loc[e["object"], "cell_type_probability"]) < 1e-4
        words = [t["token"] for t in e["tokens"]]
        prompt = model.prompts_for(toy_cells, [e["object"]])[0]
        assert " ".join(words) == prompt["text"]
        assert words[-3:] == ["task", "type", "answer"]
        assert all(t["part"] == "task" for t in e["tokens"][-3:])
        for t in e["tokens"]:
            assert t["part"] in ("anchor", "template", "task") or t["part"].startswith("partner:")
            assert np.isfinite(t["score"])
        anchor = [t for t in e["tokens"] if t["part"] == "anchor"]
        assert sorted(d["marker"] for d in e["markers"]) == sorted(t["token"] for t in anchor)
        assert [d["score"] for d in e["markers"]] == sorted((d["score"] for d in e["markers"]), reverse=True)
        assert [p["object"] for p in e["partners"]] == [p["Object"] for p in prompt["partners"]]
        for p in e["partners"]:
            assert {"object", "role", "distance_um", "direction", "score"} <= set(p)
            own = [t for t in e["tokens"] if t["part"] == f"partner:{p['object']}"]
            assert own[0]["token"] == ("near" if p["role"] == "positive" else "far")
            assert abs(sum(t["score"] for t in own) - p["score"]) < 1e-9
        # punctuation and the [BOS] are template words; [BOS] and task words are kept in the baseline
        assert e["tokens"][0]["token"] == "[BOS]" and e["tokens"][0]["score"] == 0.0
        assert all(t["score"] == 0.0 for t in e["tokens"][-3:])
    json.dumps(toy_explanations[0])  # plain JSON types


def test_completeness(toy_explanations):
    rel = np.array([e["completeness_error"] / max(abs(e["f_input"] - e["f_baseline"]), 0.1)
                    for e in toy_explanations])
    sums = np.array([sum(t["score"] for t in e["tokens"]) for e in toy_explanations])
    delta = np.array([e["f_input"] - e["f_baseline"] for e in toy_explanations])
    assert np.allclose(np.abs(sums - delta), [e["completeness_error"] for e in toy_explanations], atol=1e-6)
    assert rel.max() < 0.05, rel.max()  # adaptive steps: every cell within 5 %
    assert {e["n_steps"] for e in toy_explanations} <= {16, 32, 64, 128, 256}


def test_completeness_improves_with_steps(tiny_model, toy_cells):
    from spatial2sentence.explain import explain_cells

    model, _ = tiny_model
    cs = model.prepare(toy_cells)
    errs = {}
    for steps in (8, 128):
        ex = explain_cells(model, cs, list(range(1, 9)), n_steps=steps, tolerance=None)
        errs[steps] = np.median([e["completeness_error"] / max(abs(e["f_input"] - e["f_baseline"]), 0.1)
                                 for e in ex])
        assert all(e["n_steps"] == steps for e in ex)
    assert errs[128] < 0.01 and errs[128] < errs[8]


def test_batched_equals_unbatched(tiny_model, toy_cells):
    from spatial2sentence.explain import explain_cells

    model, _ = tiny_model
    cs = model.prepare(toy_cells)
    ids = [3, 17, 40, 41, 77, 88]
    together = explain_cells(model, cs, ids, n_steps=16, tolerance=None, internal_batch_size=1024)
    alone = [explain_cells(model, cs, [i], n_steps=16, tolerance=None, internal_batch_size=7)[0] for i in ids]
    for a, b in zip(together, alone):
        assert a["object"] == b["object"]
        np.testing.assert_allclose([t["score"] for t in a["tokens"]], [t["score"] for t in b["tokens"]],
                                   atol=2e-5)
        assert abs(a["f_baseline"] - b["f_baseline"]) < 1e-5


def test_agrees_with_captum(tiny_model, toy_cells):
    """Our IG over inputs_embeds = captum's LayerIntegratedGradients on the embedding layer."""
    captum_attr = pytest.importorskip("captum.attr")
    from spatial2sentence.explain import explain_cells
    from spatial2sentence.positions import prompt_positions

    model, _ = tiny_model
    cs = model.prepare(toy_cells)
    ids = model.label_ids("type")
    for obj in (5,):
        ours = explain_cells(model, cs, [obj], n_steps=32, tolerance=None)[0]
        tokens = model.prompts_for(cs, [obj])[0]["tokens"]
        target = model.type_labels.index(ours["target"])
        x = torch.as_tensor([tokens])
        base = x.clone()
        base[0, 1:-3] = model.tokenizer.pad_id  # [BOS] and the task words kept

        def f(inp):  # numbered by line like the model's prompts (spatial2sentence.positions)
            mask = torch.ones_like(inp)
            logits = model.lm(input_ids=inp, attention_mask=mask, position_ids=prompt_positions(model.lm, inp, mask),
                              use_cache=False).logits[:, -1, ids].float()
            return torch.log_softmax(logits, -1)[:, target]

        lig = captum_attr.LayerIntegratedGradients(f, model.lm.get_input_embeddings())
        attr = lig.attribute(x, baselines=base, n_steps=32, method="gausslegendre")
        theirs = attr.sum(-1)[0].detach().numpy()
        np.testing.assert_allclose([t["score"] for t in ours["tokens"]], theirs, atol=2e-4)


def test_only_difference_gets_top_attribution(tiny_model, toy_cells, toy_explanations):
    """x and y differ only by PIN: for every x cell called x, PIN is its top-attributed marker."""
    truth = toy_cells.set_index("Object")["cell_type"]
    xs = [e for e in toy_explanations if truth[e["object"]] == "x" and e["predicted"] == "x"]
    assert len(xs) >= 20
    top = [e["markers"][0]["marker"] for e in xs]
    assert np.mean([t == "PIN" for t in top]) >= 0.95, top


def test_explicit_target_and_errors(tiny_model, toy_cells):
    from spatial2sentence.errors import ModelInputError
    from spatial2sentence.explain import explain_cells

    model, _ = tiny_model
    cs = model.prepare(toy_cells)
    (e,) = explain_cells(model, cs, [1], target="y", n_steps=16)
    assert e["target"] == "y"
    total = sum(t["score"] for t in e["tokens"])
    assert abs(total - (e["f_input"] - e["f_baseline"])) <= e["completeness_error"] + 1e-9
    assert abs(np.exp(e["f_input"]) - e["probabilities"]["y"]) < 1e-5
    with pytest.raises(ModelInputError, match="unknown type class"):
        explain_cells(model, cs, [1], target="nope")
    with pytest.raises(ModelInputError, match="no cell with Object"):
        explain_cells(model, cs, [9999])


def toy_image_files(tmp_path, seed=3):
    """A 6-channel image of 49 square cells on a grid (types x / y / z), its mask and panel."""
    from spatial2sentence.io import write_tiff_atomic

    rng = np.random.default_rng(seed)
    ct = rng.choice(["x", "y", "z"], size=49)
    expr = toy_expression(ct, rng)
    data = np.zeros((len(MARKERS), 7 * 14, 7 * 14), np.float32)
    mask = np.zeros(data.shape[1:], np.uint16)
    for k in range(49):
        r, c = divmod(k, 7)
        sl = (slice(r * 14 + 2, r * 14 + 10), slice(c * 14 + 2, c * 14 + 10))
        mask[sl] = k + 1
        for j, m in enumerate(MARKERS):
            data[j][sl] = expr[m][k]
    img = write_tiff_atomic(tmp_path / "toy.tiff", data)
    msk = write_tiff_atomic(tmp_path / "toy_mask.tiff", mask)
    panel = tmp_path / "panel.csv"
    panel.write_text("channel,name,keep\n" + "".join(f"Ch{i},{m},1\n" for i, m in enumerate(MARKERS)))
    return img, msk, panel


def test_cli_json_and_text(tiny_model, tmp_path):
    from click.testing import CliRunner

    from spatial2sentence.cli import main

    _, model_dir = tiny_model
    img, msk, panel = toy_image_files(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["explain", "--model", str(model_dir), str(img), str(msk), "--panel", str(panel),
                               "--cell", "12", "--json"])
    assert res.exit_code == 0, res.output
    ex = json.loads(res.output)
    assert {"object", "predicted", "target", "probabilities", "tokens", "markers", "partners", "baseline",
            "n_steps", "completeness_error"} <= set(ex)
    assert ex["object"] == 12
    assert {"token", "score", "part"} == set(ex["tokens"][0])
    assert all({"marker", "word", "score"} == set(d) and d["word"] == d["marker"] for d in ex["markers"])
    assert all({"object", "role", "distance_um", "direction", "score"} == set(p) for p in ex["partners"])

    res = runner.invoke(main, ["explain", "--model", str(model_dir), str(img), str(msk), "--panel", str(panel),
                               "--cell", "12", "--target", "z"])
    assert res.exit_code == 0, res.output
    assert "explaining z" in res.output and "top markers of the cell" in res.output
    lines = res.output.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("[BOS]"))
    # every word has its score in the column under it
    words, scores = lines[i].split(), lines[i + 1].split()
    assert len(words) == len(scores)
    for w in words:
        assert lines[i + 1][lines[i].index(w)] in "+-"

    res = runner.invoke(main, ["explain", "--model", str(model_dir), str(img), str(msk), "--panel", str(panel),
                               "--cell", "500"])
    assert res.exit_code == 1
    assert "no cell with Object 500" in res.output


def test_around_line_words_are_their_own_part():
    """The v2 'around' line after the partner lines is attributed as part 'around', not as template."""
    from spatial2sentence.explain import prompt_parts

    words = ("[BOS] cell : CD3 CD8A ; near <10um north : CD3 ; far <120um west : KRT19 ; "
             "around : CD3 CD20 ; task type answer").split(" ")
    parts = prompt_parts(words, [{"Object": 5}, {"Object": 9}])
    got = dict(zip(range(len(words)), parts))
    around = [w for w, p in zip(words, parts) if p == "around"]
    assert around == ["around", "CD3", "CD20"]
    assert [w for w, p in zip(words, parts) if p == "anchor"] == ["CD3", "CD8A"]
    assert [w for w, p in zip(words, parts) if p == "partner:9"] == ["far", "<120um", "west", "KRT19"]
    assert got[len(words) - 1] == "task"
