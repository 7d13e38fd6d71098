"""The model: tiny models trained on real data (the 3 Damond toy images), save/load, determinism,
constrained prediction, bad input, the CLI. Fast: tiny models, a few seconds each."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spatial2sentence.errors import ModelInputError, S2SInputError
from spatial2sentence.domain import PanelCoverageError
from spatial2sentence.model import DEFAULT_MODEL_DIR, S2SModel
from spatial2sentence.settings import ModelSettings, TrainSettings
from spatial2sentence.training import train

from conftest import TEST_DATA as DATA  # noqa: E402
TOY = DATA / "damond_pancreas_toy"
TINY = ModelSettings(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=96)


def tiny_settings(steps=25, seed=0, **kw):
    kw = {"eval_every": 10, **kw}
    return TrainSettings(steps=steps, seed=seed, batch_size=16, lr=3e-3, warmup_steps=5, eval_prompts=48,
                         checkpoint_every=10_000, num_threads=1, **kw)


def toy_cells() -> pd.DataFrame:
    """The 3 real toy images measured with our reader, joined with their labels (362 real cells)."""
    from spatial2sentence.tables import load_table

    return load_table(TOY, progress=False)


@pytest.fixture(scope="module")
def cells():
    return toy_cells()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, cells):
    out = tmp_path_factory.mktemp("tiny")
    res = train(cells, out, model_settings=TINY, train_settings=tiny_settings(), progress_bar=False, log=lambda *a: None)
    return out, res


def test_toy_cells_are_real_and_labelled(cells):
    assert len(cells) == 362 and set(cells["cell_type"]) == {"alpha", "beta", "other"}
    assert {"H3", "CD99", "PIN", "CD8a", "CDH", "x", "y", "stage"} <= set(cells.columns)


def test_model_directory_files(tiny):
    out, res = tiny
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "s2s_config.json", "MODEL_CARD.md"} <= names
    meta = json.loads((out / "s2s_config.json").read_text())
    assert meta["markers"] == ["H3", "CD99", "PIN", "CD8A", "CDH1"]
    assert meta["type_labels"] == ["alpha", "beta", "other"]
    assert meta["status_labels"] == ["Long-duration", "Non-diabetic", "Onset"]
    assert set(meta["normalizer"]["centre"]) == set(meta["markers"])
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode("cell : PIN CD99 ; task type answer T:beta").ids == res.model.tokenizer.encode(
        "cell : PIN CD99 ; task type answer T:beta".split())


def test_save_load_identical_probabilities(tiny, cells, tmp_path):
    out, res = tiny
    a = S2SModel.from_pretrained(out, device="cpu").predict_cells(cells)
    res.model.save_pretrained(tmp_path / "again")
    b = S2SModel.from_pretrained(tmp_path / "again", device="cpu").predict_cells(cells)
    cols = [c for c in a.cells.columns if c.startswith("p_")]
    np.testing.assert_array_equal(a.cells[cols].to_numpy(), b.cells[cols].to_numpy())
    pd.testing.assert_frame_equal(a.image_status, b.image_status)


def test_models_saved_before_rank_by_still_rank_by_z(tiny, cells, tmp_path):
    """A model directory written before ``rank_by`` existed must keep its z ranking, not take the new
    default: same sentences, same probabilities."""
    import shutil

    out, res = tiny
    assert res.model.sentence.rank_by == "range"
    old = tmp_path / "old"
    shutil.copytree(out, old)
    meta = json.loads((old / "s2s_config.json").read_text())
    meta["sentence"]["rank_by"] = "z"
    (old / "s2s_config.json").write_text(json.dumps(meta))
    explicit = S2SModel.from_pretrained(old, device="cpu").predict_cells(cells)
    del meta["sentence"]["rank_by"]
    (old / "s2s_config.json").write_text(json.dumps(meta))
    legacy = S2SModel.from_pretrained(old, device="cpu")
    assert legacy.sentence.rank_by == "z"
    implicit = legacy.predict_cells(cells)
    cols = [c for c in explicit.cells.columns if c.startswith("p_")]
    np.testing.assert_array_equal(explicit.cells[cols].to_numpy(), implicit.cells[cols].to_numpy())
    ranged = S2SModel.from_pretrained(out, device="cpu").predict_cells(cells)
    assert not np.array_equal(ranged.cells[cols].to_numpy(), implicit.cells[cols].to_numpy())


def test_training_is_deterministic(cells, tmp_path):
    import torch

    w = []
    for k in range(2):
        r = train(cells, tmp_path / f"m{k}", model_settings=TINY, train_settings=tiny_settings(steps=8, seed=5),
                  progress_bar=False, log=lambda *a: None)
        w.append({n: p.detach().clone() for n, p in r.model.lm.state_dict().items()})
    assert w[0].keys() == w[1].keys()
    assert all(torch.equal(w[0][n], w[1][n]) for n in w[0])


def test_probabilities_cover_every_class_and_sum_to_one(tiny, cells):
    model = S2SModel.from_pretrained(tiny[0], device="cpu")
    pred = model.predict_cells(cells)
    c = pred.cells
    p = c[["p_alpha", "p_beta", "p_other"]].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    sig = ~c["no_signal"].to_numpy(bool)  # a cell with no marker present is "unknown", probability NaN
    np.testing.assert_allclose(c["cell_type_probability"][sig], p.max(1)[sig], atol=1e-6)
    assert (c.loc[~sig, "cell_type"] == "unknown").all() and c.loc[~sig, "cell_type_probability"].isna().all()
    ps = c[[f"p_status_{s}" for s in model.status_labels]].to_numpy()
    np.testing.assert_allclose(ps.sum(1), 1.0, atol=1e-5)
    assert set(pred.image_status["image"]) == {"E34", "G01", "J02"}
    assert np.allclose(pred.image_status[[f"p_status_{s}" for s in model.status_labels]].sum(1), 1.0)
    assert list(c["Object"]) == list(cells["Object"])


def test_one_pass_scoring_matches_full_logits(tiny, cells):
    """The constrained one-pass probabilities equal a softmax over the label tokens of an ordinary
    right-padded forward pass (no left-padding artefacts)."""
    import torch

    model = S2SModel.from_pretrained(tiny[0], device="cpu")
    sub = cells[cells["image"] == "G01"].head(12)
    prompts = model.prompts_for(sub)
    pred = model.predict_cells(sub, tasks=("type",))
    lid = model.label_ids("type")
    from spatial2sentence.positions import prompt_positions

    for k, p in enumerate(prompts):
        ids = torch.tensor([p["tokens"]])
        mask = torch.ones_like(ids)  # numbered as the model numbers its prompts (spatial2sentence.positions)
        with torch.no_grad():
            logits = model.lm(input_ids=ids, attention_mask=mask,
                              position_ids=prompt_positions(model.lm, ids, mask)).logits[0, -1]
        ref = torch.softmax(logits[lid], -1).numpy()
        np.testing.assert_allclose(pred.cells[["p_alpha", "p_beta", "p_other"]].to_numpy()[k], ref, atol=2e-5)


def test_prompts_for_lists_partners(tiny, cells):
    model = S2SModel.from_pretrained(tiny[0], device="cpu")
    sub = cells[cells["image"] == "E34"]
    obj = int(sub["Object"].iloc[10])
    [p] = model.prompts_for(sub, [obj])
    assert p["Object"] == obj and p["text"].startswith("[BOS] cell :") and p["text"].endswith("task type answer")
    roles = [q["role"] for q in p["partners"]]
    assert roles.count("positive") <= 2 and roles.count("negative") <= 1
    for q in p["partners"]:
        assert q["direction"] in p["text"] and q["distance_um"] >= 0
    assert len(p["tokens"]) == len(p["text"].split())
    with pytest.raises(ModelInputError, match="no cell with Object"):
        model.prompts_for(sub, [999_999])


def test_partial_panel_and_unknown_markers(tiny, cells):
    model = S2SModel.from_pretrained(tiny[0], device="cpu")
    sub = cells[cells["image"] == "J02"][["Object", "x", "y", "PIN", "CD99", "H3"]].copy()
    sub = sub.rename(columns={"PIN": "proinsulin"})  # an alias
    sub["FOO1"] = 1.0
    with pytest.warns(UserWarning, match="FOO1"):
        pred = model.predict_cells(sub, markers=["proinsulin", "CD99", "H3", "FOO1"], allow_partial_panel=True)
    assert pred.unknown_markers == ["FOO1"] and set(pred.used_markers) == {"PIN", "CD99", "H3"}
    assert pred.cells["cell_type"].notna().all()


def test_no_shared_marker_is_a_clear_error(tiny):
    model = S2SModel.from_pretrained(tiny[0], device="cpu")
    df = pd.DataFrame({"Object": [1, 2], "x": [1.0, 2.0], "y": [1.0, 2.0], "CD3": [1.0, 2.0], "CD20": [0.0, 1.0]})
    with pytest.raises(ModelInputError, match="shares no marker") as err:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.predict_cells(df)
    assert isinstance(err.value, S2SInputError) and "\n" not in str(err.value)


def test_empty_and_one_cell_images(tiny, cells):
    model = S2SModel.from_pretrained(tiny[0], device="cpu")
    with pytest.raises(ModelInputError, match="no cells"):
        model.predict_cells(cells.iloc[:0])
    with pytest.raises(S2SInputError, match="empty image"):
        from spatial2sentence.annotate import annotate_image
        from spatial2sentence.io import read_image

        img = read_image(TOY / "img" / "E34.tiff", panel=TOY / "panel.csv")
        annotate_image(model, img, np.zeros(img.shape, np.uint16))
    one = model.predict_cells(cells.iloc[[0]].drop(columns=["image"]))
    assert len(one.cells) == 1 and np.isclose(one.cells[["p_alpha", "p_beta", "p_other"]].sum(1).iloc[0], 1.0)
    [p] = model.prompts_for(cells.iloc[[0]])
    assert p["partners"] == [] and " near " not in p["text"]


def test_label_set_mismatch_is_a_clear_error(cells, tmp_path):
    with pytest.raises(ModelInputError, match="differ from the configured label set"):
        train(cells, tmp_path / "x", model_settings=TINY, train_settings=tiny_settings(steps=1),
              type_labels=["alpha", "beta"], progress_bar=False)


def test_progress_callback_and_cancel(tiny, cells):
    model = S2SModel.from_pretrained(tiny[0], device="cpu")
    seen = []
    full = model.predict_cells(cells, batch_size=100, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (362, 362) and len(seen) == 4
    part = model.predict_cells(cells, batch_size=100, progress=lambda d, t: False)
    assert part.cancelled and part.cells["cell_type"].notna().sum() == 100
    done = part.cells["cell_type"].notna()
    pd.testing.assert_frame_equal(part.cells[done], full.cells[done])
    assert not full.cancelled


def test_single_cell_format_and_phenotype_only_cells(cells, tmp_path):
    from spatial2sentence.settings import PromptSettings

    r = train(cells, tmp_path / "single", model_settings=TINY, prompt=PromptSettings(format="single"),
              train_settings=tiny_settings(steps=5), progress_bar=False, log=lambda *a: None)
    [p] = r.model.prompts_for(cells.iloc[:3], [int(cells["Object"].iloc[0])])
    assert p["partners"] == [] and ";" in p["text"] and "near" not in p["text"]
    # phenotyped layouts (no markers): sentences from the phenotype, status is learned and predicted
    lay = pd.read_csv(DATA / "damond_diabetes_layouts" / "cells.csv.gz", nrows=6000)
    lay = lay.rename(columns={"imageID": "image", "cellType": "cell_type"})[["image", "x", "y", "cell_type", "stage"]]
    r = train(lay, tmp_path / "pheno", model_settings=TINY, train_settings=tiny_settings(steps=5),
              progress_bar=False, log=lambda *a: None)
    [p] = r.model.prompts_for(lay.head(50), [3])
    assert "phenotype T:" in p["text"]
    pred = r.model.predict_cells(lay.head(300), tasks=("status",))
    assert pred.image_status["status"].notna().all()


def test_cli_predict_and_sentences(tiny, tmp_path):
    from click.testing import CliRunner

    from spatial2sentence.cli import main

    out = tmp_path / "pred.csv"
    args = ["predict", "--model", str(tiny[0]), str(TOY / "img" / "G01.tiff"), str(TOY / "masks" / "G01.tiff"),
            "--panel", str(TOY / "panel.csv"), "-o", str(out), "--device", "cpu"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    assert {"Object", "cell_type", "cell_type_probability", "p_alpha", "p_beta", "p_other"} <= set(df.columns)
    status = json.loads((tmp_path / "pred.status.json").read_text())
    assert status["status"] in ("Non-diabetic", "Onset", "Long-duration") and "clinical status" in r.output
    r = CliRunner().invoke(main, ["sentences", "--model", str(tiny[0]), str(TOY / "img" / "G01.tiff"),
                                  str(TOY / "masks" / "G01.tiff"), "--panel", str(TOY / "panel.csv"), "-n", "2"])
    assert r.exit_code == 0 and r.output.count("[BOS] cell :") == 2
    r = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "nope"), str(TOY / "img" / "G01.tiff"),
                                  str(TOY / "masks" / "G01.tiff"), "-o", str(out)])
    assert r.exit_code == 1 and "model folder not found" in r.output
    r = CliRunner().invoke(main, args[:-2] + ["--device", "cpu", "--dtype", "bfloat16", "--batch-size", "7"])
    assert r.exit_code == 0, r.output
    assert (pd.read_csv(out)["cell_type"] == df["cell_type"]).mean() >= 0.9


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "s2s_config.json").exists(), reason="default model not built")
def test_default_model_reads_the_real_toy_images(cells):
    model = S2SModel.from_pretrained(None, device="cpu")
    assert len(model.type_labels) == 16 and model.status_labels == ["Non-diabetic", "Onset", "Long-duration"]
    sub = cells[cells["image"] == "G01"]
    # the domain guard: 4 of the model's 34 non-nuclear markers type 53% of its held-out check cells (it
    # needs 59%), so the real crops are refused unless a partial panel is allowed
    with pytest.raises(PanelCoverageError, match="4 of 34 model markers present .*check cells"):
        model.predict_cells(sub, markers=["H3", "CD99", "PIN", "CD8a", "CDH"])
    pred = model.predict_cells(sub, markers=["H3", "CD99", "PIN", "CD8a", "CDH"], allow_partial_panel=True)
    assert pred.coverage.present == ["CD99", "PIN", "CD8A", "CDH1"] and not pred.coverage.ok
    assert pred.unknown_markers == [] and len(pred.cells) == len(sub)
    assert sum((DEFAULT_MODEL_DIR / f).stat().st_size for f in ("model.safetensors",)) < 25e6


def test_resume_continues_from_the_checkpoint(cells, tmp_path):
    msgs = []
    train(cells, tmp_path / "r", model_settings=TINY, train_settings=tiny_settings(steps=4), progress_bar=False,
          log=msgs.append)
    assert (tmp_path / "r" / "checkpoint" / "state.pt").exists()
    r = train(cells, tmp_path / "r", model_settings=TINY, train_settings=tiny_settings(steps=6), resume=True,
              progress_bar=False, log=msgs.append)
    assert any("resumed" in m and "step 4" in m for m in msgs) and r.steps_done == 6


def test_measurement_cache_is_refreshed_when_the_folder_changes(tmp_path):
    """A recipe's cache must never feed a re-rendered folder's old measurements into training."""
    import os
    import shutil

    from spatial2sentence.tables import load_table

    folder = tmp_path / "toy"
    shutil.copytree(TOY, folder)
    cache = tmp_path / "cells.csv.gz"
    first = load_table(folder, cache=cache, progress=False)
    assert cache.exists() and len(first) == 362
    # Edit the labels (as a re-render would) and make the folder newer than the cache.
    labels = pd.read_csv(folder / "labels.csv")
    labels = labels[labels["cell_type"] != "other"]
    labels.to_csv(folder / "labels.csv", index=False)
    os.utime(cache, (1_000_000, 1_000_000))
    second = load_table(folder, cache=cache, progress=False)
    assert set(second["cell_type"].dropna()) == {"alpha", "beta"}
    # An untouched folder reads the (fresh) cache back unchanged.
    third = load_table(folder, cache=cache, progress=False)
    pd.testing.assert_frame_equal(second.reset_index(drop=True), third.reset_index(drop=True), check_dtype=False)


def test_shared_context_scoring_equals_whole_prompts(tiny, cells):
    """Type and status scored on one shared context pass give the probabilities of the whole prompts."""
    from spatial2sentence.predict import score_prompts, score_tasks
    from spatial2sentence.prompts import task_words

    model = S2SModel.from_pretrained(tiny[0], device="cpu")
    cs = model.prepare(cells)
    idx = np.r_[0:40, 200:240]
    sents = cs.sentences(np.arange(len(cs)), model.sentence)
    ctx = [model.tokenizer.encode(cs.context_words(int(i), model.sentence, model.prompt, sentence_cache=sents))
           for i in idx]
    assert len({len(c) for c in ctx}) > 1  # left padding is exercised
    suffixes = {t: model.tokenizer.encode(task_words(t)) for t in ("type", "status")}
    labels = {t: model.label_ids(t) for t in suffixes}
    shared = score_tasks(model.lm, ctx, suffixes, labels, model.tokenizer.pad_id, "cpu")
    for t, words in suffixes.items():
        whole = score_prompts(model.lm, [c + words for c in ctx], labels[t], model.tokenizer.pad_id, "cpu")
        np.testing.assert_allclose(shared[t], whole, atol=1e-5)
        assert shared[t].shape == (len(idx), len(labels[t]))


def test_one_task_prediction_equals_the_shared_context_run(tiny, cells):
    """Type alone runs whole prompts without a cache; it must give what the type + status run gives."""
    model = S2SModel.from_pretrained(tiny[0], device="cpu")
    alone = model.predict_cells(cells, tasks=("type",))
    both = model.predict_cells(cells)
    cols = [c for c in alone.cells.columns if c.startswith("p_")]
    assert cols and not any(c.startswith("p_status_") for c in cols)
    np.testing.assert_allclose(alone.cells[cols].to_numpy(), both.cells[cols].to_numpy(), atol=1e-5)
    assert (alone.cells["cell_type"] == both.cells["cell_type"]).all()


def test_bfloat16_on_cpu_nearly_matches_float32_and_saves_float32(cells, tmp_path):
    import torch
    from safetensors import safe_open

    from spatial2sentence.commands import DTYPE_CHOICES
    from spatial2sentence.model import DTYPES

    assert DTYPE_CHOICES == DTYPES  # the CLI's spelled-out choices
    with pytest.raises(S2SInputError, match="dtype"):
        S2SModel.from_pretrained(None, device="cpu", dtype="float16x")
    f32 = S2SModel.from_pretrained(None, device="cpu")
    bf16 = S2SModel.from_pretrained(None, device="cpu", dtype="bfloat16")
    assert next(f32.lm.parameters()).dtype == torch.float32
    assert next(bf16.lm.parameters()).dtype == torch.bfloat16
    markers = ["H3", "CD99", "PIN", "CD8a", "CDH"]
    a = f32.predict_cells(cells, markers=markers, allow_partial_panel=True).cells
    b = bf16.predict_cells(cells, markers=markers, allow_partial_panel=True).cells
    cols = [c for c in a.columns if c.startswith("p_")]
    assert b[cols].dtypes.eq(np.float32).all()  # probabilities stay float32
    assert np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max() < 0.1
    assert (a["cell_type"] == b["cell_type"]).mean() >= 0.95
    # saving writes float32 weights and leaves the live model in bfloat16 (Module.float() is in place)
    bf16.save_pretrained(tmp_path / "saved")
    assert next(bf16.lm.parameters()).dtype == torch.bfloat16
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def _padded_prompts(model, cells, n=40):
    from spatial2sentence.positions import prompt_positions
    from spatial2sentence.predict import _left_pad

    seqs = [p["tokens"] for p in model.prompts_for(cells.head(n))]
    assert len({len(s) for s in seqs}) > 1  # left padding is exercised
    ids, mask, _ = _left_pad(seqs, model.tokenizer.pad_id)
    return ids, mask, prompt_positions(model.lm, ids, mask)


def test_answer_position_shortcut_equals_the_plain_forward(cells):
    """The default (Llama) model runs its last layer for the answer position only; the logits and the
    shared-context cache equal those of transformers' own forward."""
    import torch

    from spatial2sentence import predict

    model = S2SModel.from_pretrained(DEFAULT_MODEL_DIR, device="cpu", backend="transformers")
    lm = model.lm
    ids, mask, pos = _padded_prompts(model, cells)
    with torch.inference_mode():
        fast = predict.answer_logits(lm, ids, mask, pos)
        assert lm._s2s_answer_shortcut_ok is True
        plain = lm(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
        torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)
        mine = predict.context_cache(lm, ids, mask, pos)
        theirs = lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True).cache
        assert len(mine.layers) == len(theirs.layers) == lm.config.num_hidden_layers
        for a, b in zip(mine.layers, theirs.layers):
            torch.testing.assert_close(a.keys, b.keys, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(a.values, b.values, atol=1e-4, rtol=1e-4)


def test_other_architectures_and_a_failed_check_use_the_plain_forward(cells, tmp_path, monkeypatch):
    """A GPT-2 base never takes the Llama shortcut; a Llama model whose shortcut disagrees with the plain
    forward on the first batch (a changed transformers, say) falls back to it: same probabilities."""
    import torch

    from spatial2sentence import predict

    gpt = tmp_path / "gpt2"
    train(cells, gpt, model_settings=ModelSettings(architecture="gpt2", hidden_size=32, num_layers=2, num_heads=2,
                                                   intermediate_size=64, max_positions=96),
          train_settings=tiny_settings(steps=5), progress_bar=False, log=lambda *a: None)
    sub = cells[cells["image"] == "G01"].head(30)
    model = S2SModel.from_pretrained(gpt, device="cpu")
    pred = model.predict_cells(sub)
    assert model.lm._s2s_answer_shortcut_ok is False
    assert np.isfinite(pred.cells["cell_type_probability"][~pred.cells["no_signal"]]).all()

    llama = S2SModel.from_pretrained(DEFAULT_MODEL_DIR, device="cpu")
    reference = llama.predict_cells(sub, allow_partial_panel=True).cells
    broken = S2SModel.from_pretrained(DEFAULT_MODEL_DIR, device="cpu")
    real = predict._llama_answer_logits
    monkeypatch.setattr(predict, "_llama_answer_logits", lambda *a: real(*a) + torch.arange(real(*a).shape[-1]))
    fallback = broken.predict_cells(sub, allow_partial_panel=True).cells
    assert broken.lm._s2s_answer_shortcut_ok is False
    cols = [c for c in reference.columns if c.startswith("p_")]
    np.testing.assert_allclose(fallback[cols].to_numpy(), reference[cols].to_numpy(), atol=1e-5)


def test_levels_sentences_train_predict_and_explain(cells, tmp_path):
    """A model with level words (encoding "levels"): its vocabulary holds every MARKER:L word, prompts
    fit its positions (raised from 32 here), and attributions of MARKER:L words map to the marker."""
    from spatial2sentence.explain import explain_cells
    from spatial2sentence.settings import SentenceSettings
    from spatial2sentence.sentences import word_marker

    s = SentenceSettings(encoding="levels", n_levels=6, partner_words=2)
    small = ModelSettings(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=32)
    logs = []
    r = train(cells, tmp_path / "lev", sentence=s, model_settings=small, train_settings=tiny_settings(steps=10),
              progress_bar=False, log=logs.append)
    m = S2SModel.from_pretrained(tmp_path / "lev", device="cpu")
    assert m.sentence.encoding == "levels" and set(m.normalizer.levels) == set(m.markers)
    assert r.model.model_settings.max_positions > 32 and any("max_positions raised" in str(x) for x in logs)
    assert all(f"{mk}:{lv}" in m.tokenizer.vocab for mk in m.markers for lv in range(1, 7))
    prompts = m.prompts_for(cells.iloc[:80])
    assert all(m.tokenizer.unk_id not in p["tokens"] for p in prompts)
    assert max(len(p["tokens"]) + 2 for p in prompts) <= m.model_settings.max_positions
    assert any(":" in w for p in prompts for w in p["text"].split(" ")[3:6])
    for p in prompts:  # partner lines ("near|far <dist> <dir> : words ;") keep at most 2 words
        lines = " ".join(p["text"].split(" ")[:-3]).split(" ; ")[1:]
        words = [[w for w in ln.split(" : ")[1].split() if w != ";"] for ln in lines if " : " in ln]
        assert len(words) == len(p["partners"]) and all(1 <= len(w) <= 2 for w in words)
    assert sum(len(p["partners"]) for p in prompts) > 100
    pred = m.predict_cells(cells.iloc[:80])
    assert len(pred.cells) == 80
    ex = explain_cells(m, cells.iloc[:80], cells["Object"].iloc[:3].tolist(), n_steps=8)
    for e in ex:
        anchor = [t["token"] for t in e["tokens"] if t["part"] == "anchor" and t["token"] != "nil"]
        assert [d["word"] for d in e["markers"]] and {d["word"] for d in e["markers"]} == set(anchor)
        assert all(d["marker"] == word_marker(d["word"]) in m.markers for d in e["markers"])


def test_prompt_length_bounds_every_prompt():
    from spatial2sentence.settings import PairSettings, PromptSettings, SentenceSettings
    from spatial2sentence.training import fit_positions, prompt_length

    lev, ranked = SentenceSettings(encoding="levels"), SentenceSettings()
    pairs, multi = PairSettings(n_pos=2, n_neg=1), PromptSettings()
    assert prompt_length(lev, pairs, multi, 37) == 4 + 37 + 3 * (5 + 37) + 5
    assert prompt_length(ranked, pairs, multi, 37) == 4 + 12 + 3 * (5 + 12) + 5
    assert prompt_length(lev, pairs, PromptSettings(format="single"), 5) == 4 + 5 + 5
    assert fit_positions(ModelSettings(max_positions=128), lev, pairs, multi, 37, log=lambda *a: None).max_positions == 192
    assert fit_positions(ModelSettings(max_positions=128), ranked, pairs, multi, 37).max_positions == 128
    short = SentenceSettings(encoding="levels", partner_words=8)
    assert prompt_length(short, pairs, multi, 37) == 4 + 37 + 3 * (5 + 8) + 5


def test_values_carried_into_embeddings_train_save_load_and_matter(cells, tmp_path):
    """A model whose marker words carry their measured values (``SentenceSettings.values``): the value
    embedding is saved and read back (same probabilities after a reload), the values reach the model
    (changing one marker's intensity within the same level word changes the probabilities), the
    prompt's values line up with its marker words, and attributions run over words + values."""
    import torch

    from spatial2sentence.explain import explain_cells
    from spatial2sentence.numeric import VALUE_KEY, has_values
    from spatial2sentence.sentences import word_marker
    from spatial2sentence.settings import SentenceSettings
    from safetensors import safe_open

    s = SentenceSettings(encoding="levels", n_levels=4, partner_words=2, values=True)
    small = ModelSettings(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)
    r = train(cells, tmp_path / "val", sentence=s, model_settings=small,
              train_settings=tiny_settings(steps=12, select_by="accuracy"), progress_bar=False, log=lambda *a: None)
    assert has_values(r.model.lm)
    with safe_open(str(tmp_path / "val" / "model.safetensors"), "pt") as f:
        assert VALUE_KEY in f.keys()
    m = S2SModel.from_pretrained(tmp_path / "val", device="cpu")
    assert m.sentence.values and has_values(m.lm)
    torch.testing.assert_close(m.lm.s2s_value_embedding.weight, r.model.lm.s2s_value_embedding.weight)
    sub = cells.iloc[:60].reset_index(drop=True)
    a = m.predict_cells(sub, threads=1).cells
    b = r.model.predict_cells(sub, threads=1).cells
    cols = [c for c in a.columns if c.startswith("p_")]
    np.testing.assert_allclose(a[cols].to_numpy(float), b[cols].to_numpy(float), atol=1e-5)
    # values line up with the prompt's words: marker words carry the cell's range value, others 0
    p = m.prompts_for(sub, [sub["Object"].iloc[0]])[0]
    words = p["text"].split(" ")
    assert len(p["values"]) == len(words) == len(p["tokens"])
    for w, v in zip(words, p["values"]):
        if word_marker(w) in m.markers:
            assert 0.0 <= v <= 1.5
        else:
            assert v == 0.0
    assert any(v > 0 for v in p["values"])
    # the same words with other values give other probabilities: the model reads the numbers
    cs = m.prepare(sub)
    i = 0
    ids, vals = m.encode_context(cs, i)
    from spatial2sentence.predict import score_prompts
    from spatial2sentence.prompts import task_words

    suffix = m.tokenizer.encode(task_words("type"))
    base = score_prompts(m.lm, [ids + suffix], m.label_ids("type"), m.tokenizer.pad_id, "cpu",
                         [vals + [0.0] * 3])
    moved = [v * 0.5 for v in vals]
    other = score_prompts(m.lm, [ids + suffix], m.label_ids("type"), m.tokenizer.pad_id, "cpu",
                          [moved + [0.0] * 3])
    assert not np.allclose(base, other, atol=1e-6)
    ex = explain_cells(m, sub, sub["Object"].iloc[:2].tolist(), n_steps=8)
    assert all(np.isfinite(e["completeness_error"]) for e in ex)


def test_neighbourhood_line_and_tissue_prompts(cells, tmp_path):
    """v2 context: the ``around`` line holds the mean of the k nearest cells' values (checked by hand
    with a KD-tree), tissue prompts rank markers by the fraction of cells where they are high (checked
    by hand) and the image's status comes from its tissue prompt."""
    from scipy.spatial import cKDTree

    from spatial2sentence.numeric import VALUE_MAX
    from spatial2sentence.predict import tissue_status
    from spatial2sentence.sentences import word_marker
    from spatial2sentence.settings import PromptSettings, SentenceSettings
    from spatial2sentence.tissue import POSITIVE, random_window, tissue_sentence

    s = SentenceSettings(encoding="levels", n_levels=4, partner_words=2, values=True)
    ps = PromptSettings(neighbourhood_k=5, neighbourhood_words=3, tissue=True)
    small = ModelSettings(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)
    ts = tiny_settings(steps=10, select_by="accuracy", task_mix={"type": 0.5, "status": 0.2, "tissue": 0.3})
    train(cells, tmp_path / "v2", sentence=s, prompt=ps, model_settings=small, train_settings=ts,
          progress_bar=False, log=lambda *a: None)
    m = S2SModel.from_pretrained(tmp_path / "v2", device="cpu")
    assert m.prompt.tissue and m.prompt.neighbourhood_k == 5
    cs = m.prepare(cells)
    i = 7
    words, values = cs.context(i, m.sentence, m.prompt)
    at = words.index("around")
    line = words[at + 2:words.index(";", at)]
    vals = values[at + 2:at + 2 + len(line)]
    same = np.flatnonzero(cs.image == cs.image[i])
    _, nb = cKDTree(cs.xy[same]).query(cs.xy[i], k=6)
    mean = np.clip(cs.range_values(same[nb[1:]]), 0, VALUE_MAX).mean(0)
    top = np.argsort(-mean, kind="stable")[:3]
    assert [word_marker(w) for w in line] == [cs.markers[j] for j in top]
    np.testing.assert_allclose(vals, mean[top], rtol=1e-5)
    # tissue sentence of one image: fractions of cells above POSITIVE, highest first, carried as sqrt
    img = np.flatnonzero(cs.image == cs.image[0])
    tw, tv = tissue_sentence(cs, img)
    frac = (cs.range_values(img) > POSITIVE).mean(0)
    assert sorted(tw) == sorted(cs.markers)
    np.testing.assert_allclose(tv, np.sqrt(np.sort(frac)[::-1]), rtol=1e-5)
    win = random_window(cs, img, np.random.default_rng(0))
    assert set(win) <= set(img) and min(len(img), 20) <= len(win) <= len(img)
    pred = m.predict_cells(cells, threads=1)
    ref = tissue_status(m, cs)
    for _, row in pred.image_status.iterrows():
        p = ref[row["image"]]
        assert row["status"] == m.status_labels[int(np.argmax(p))]
        assert row["status_probability"] == pytest.approx(float(p.max()), rel=1e-5)


def test_tissue_prompts_carry_the_cell_type_composition(cells, tmp_path):
    """PromptSettings.tissue_types: a tissue sentence is the marker fractions followed by the type words of
    the calls given, by fraction (checked by hand), each carrying sqrt(fraction); training writes the
    windows' known types (every type word a model label, the fractions summing to 1); prediction takes the
    model's own calls (the whole image's where every cell was scored, else a sample: the same here, the
    toy images being under the sample size), and other calls give another status: the model reads them."""
    from collections import Counter

    from spatial2sentence.predict import tissue_status
    from spatial2sentence.sentences import type_token
    from spatial2sentence.settings import PromptSettings
    from spatial2sentence.tissue import TYPE_SAMPLE, tissue_sentence, type_sample
    from spatial2sentence.training_data import PromptSampler

    ps = PromptSettings(tissue=True, tissue_types=True)
    ts = tiny_settings(steps=20, select_by="accuracy", task_mix={"type": 0.5, "status": 0.2, "tissue": 0.3})
    train(cells, tmp_path / "m", prompt=ps, model_settings=TINY, train_settings=ts, progress_bar=False,
          log=lambda *a: None)
    m = S2SModel.from_pretrained(tmp_path / "m", device="cpu")
    assert m.prompt.tissue_types
    cs = m.prepare(cells)
    img = np.flatnonzero(cs.image == cs.image[0])
    calls = np.array(["beta"] * 6 + ["alpha"] * 3 + ["other"], dtype=object)
    words, values = tissue_sentence(cs, img, calls)
    marker_words, _ = tissue_sentence(cs, img)
    assert words[:len(marker_words)] == marker_words
    assert words[len(marker_words):] == [type_token("beta"), type_token("alpha"), type_token("other")]
    np.testing.assert_allclose(values[len(marker_words):], np.sqrt([0.6, 0.3, 0.1]), rtol=1e-6)
    # training prompts: the window's known types
    sampler = PromptSampler(m, cs, np.arange(len(cs)), ts)
    rng = np.random.default_rng(0)
    type_words = {type_token(t) for t in m.type_labels}
    seen = 0
    for _ in range(60):
        w, v, _answer = sampler.draw(rng)
        if w[1] != "tissue":
            continue
        seen += 1
        tv = [x for word, x in zip(w, v) if word in type_words]
        assert tv and np.isclose(sum(x * x for x in tv), 1.0)
    assert seen
    # prediction: the model's own calls; the sample is the whole image below TYPE_SAMPLE cells
    assert all(len(type_sample(cs, np.flatnonzero(cs.image == im))) == (cs.image == im).sum() <= TYPE_SAMPLE
               for im in np.unique(cs.image))
    pred = m.predict_cells(cells, threads=1)
    sampled = tissue_status(m, cs, threads=1)
    for _, row in pred.image_status.iterrows():
        np.testing.assert_allclose(sampled[row["image"]],
                                   [row["p_status_" + s.replace(" ", "_")] for s in m.status_labels], rtol=1e-5)
    # another composition than the model's own calls (one label it never calls most) reads otherwise
    own = Counter(pred.cells["cell_type"])
    rare = min(m.type_labels, key=lambda t: own.get(t, 0))
    other = tissue_status(m, cs, {im: np.array([rare] * 10, dtype=object) for im in sampled}, threads=1)
    assert any(not np.allclose(other[im], sampled[im], atol=1e-5) for im in sampled)
    # read_tissues (what tissue_status reads, for any sets of cells): whole images with the same calls give
    # tissue_status's rows; a window of an image reads the same alone as beside another prompt
    from spatial2sentence.predict import read_tissues
    from spatial2sentence.tissue import random_window

    images = list(sampled)
    whole = [np.flatnonzero(cs.image == im) for im in images]
    calls = [pred.cells.loc[pred.cells["image"] == im, "cell_type"].dropna().to_numpy() for im in images]
    given = tissue_status(m, cs, dict(zip(images, calls)), threads=1)
    np.testing.assert_allclose(read_tissues(m, cs, whole, calls), np.stack([given[im] for im in images]),
                               rtol=1e-5)
    window = random_window(cs, whole[0], np.random.default_rng(3))
    assert 0 < len(window) < len(whole[0])
    both = read_tissues(m, cs, [whole[0], window], [calls[0], calls[0]])
    np.testing.assert_allclose(both[1], read_tissues(m, cs, [window], [calls[0]])[0], rtol=1e-5)
    assert read_tissues(m, cs, []).shape == (0, len(m.status_labels))
    assert read_tissues(m, cs, []).dtype == both.dtype == np.float32  # the scorer's dtype, as before


def test_tissue_prompts_are_read_by_the_state_that_read_the_validation_tissues_best(cells, tmp_path,
                                                                                     monkeypatch):
    """The tissue task overfits long before cell types stop improving, so training keeps the state with the
    best validation tissue accuracy apart (scripted validation results: tissue best at step 10, cell type
    best at step 20); it is saved in tissue_reader/, read back, and the images' status is read by it while
    the cells' types are read by the kept state. Where both bests fall on one step nothing is kept apart; a
    truncated tissue reader is refused by name."""
    import spatial2sentence.training as training
    from spatial2sentence.errors import ModelInputError
    from spatial2sentence.model import check_model_dir
    from spatial2sentence.predict import tissue_status
    from spatial2sentence.settings import PromptSettings

    def scripted(script):
        seen = {}

        def evaluate(model, val_set, batch_size=256):
            step = 10 * (len(seen) + 1)
            seen[step] = {k: v.detach().clone() for k, v in model.lm.state_dict().items()}
            type_acc, tissue_acc = script[step]
            return {"loss": 1.0, "type_acc": type_acc, "tissue_acc": tissue_acc, "tissue_loss": 1.0}
        return evaluate, seen

    ps = PromptSettings(tissue=True)
    mix = {"type": 0.5, "status": 0.2, "tissue": 0.3}
    evaluate, seen = scripted({10: (0.5, 0.9), 20: (0.7, 0.6), 30: (0.6, 0.8)})
    monkeypatch.setattr(training, "evaluate", evaluate)
    res = train(cells, tmp_path / "m", prompt=ps, model_settings=TINY,
                train_settings=tiny_settings(steps=30, select_by="accuracy", task_mix=mix),
                progress_bar=False, log=lambda *a: None)
    m = res.model

    def same(lm, state):
        return all(torch.equal(v, state[k]) for k, v in lm.state_dict().items())

    assert same(m.lm, seen[20]) and same(m.tissue_lm, seen[10]) and not same(m.lm, seen[10])
    assert m.info["training"]["tissue_reader"]["step"] == 10
    loaded = S2SModel.from_pretrained(tmp_path / "m", device="cpu")
    assert same(loaded.tissue_lm, seen[10]) and same(loaded.lm, seen[20])
    cs = loaded.prepare(cells)
    by_reader = tissue_status(loaded, cs)
    reader, loaded.tissue_lm = loaded.tissue_lm, None
    by_kept = tissue_status(loaded, cs)
    assert any(not np.allclose(by_reader[im], by_kept[im], atol=1e-6) for im in by_reader)
    loaded.lm = reader
    assert all(np.allclose(by_reader[im], tissue_status(loaded, cs)[im], atol=1e-6) for im in by_reader)
    # the image rows of a prediction carry the reader's status
    pred = S2SModel.from_pretrained(tmp_path / "m", device="cpu").predict_cells(cells, threads=1)
    for _, row in pred.image_status.iterrows():
        assert row["status"] == loaded.status_labels[int(np.argmax(by_reader[row["image"]]))]
    # a truncated tissue reader is refused by name, before anything loads
    weights = tmp_path / "m" / "tissue_reader" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelInputError, match="tissue_reader/model.safetensors is unreadable"):
        check_model_dir(tmp_path / "m")
    # both bests on one step: one state, no tissue_reader folder
    evaluate, seen = scripted({10: (0.5, 0.6), 20: (0.7, 0.9), 30: (0.6, 0.8)})
    monkeypatch.setattr(training, "evaluate", evaluate)
    res = train(cells, tmp_path / "one", prompt=ps, model_settings=TINY,
                train_settings=tiny_settings(steps=30, select_by="accuracy", task_mix=mix),
                progress_bar=False, log=lambda *a: None)
    assert res.model.tissue_lm is None and not (tmp_path / "one" / "tissue_reader").exists()
    assert res.model.info["training"]["tissue_reader"] is None


def test_values_encoding_is_every_present_marker_ranked_with_its_value(cells, tmp_path):
    """encoding "values": bare marker words of every marker above level_threshold, highest range value
    first (checked by hand), each carrying that value; training jitter (value_noise) never reaches the
    validation prompts (two trainings with different noise have the same validation set)."""
    from spatial2sentence.settings import SentenceSettings

    s = SentenceSettings(encoding="values", values=True, partner_words=2)
    small = ModelSettings(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)
    r = train(cells, tmp_path / "v", sentence=s, model_settings=small,
              train_settings=tiny_settings(steps=5, value_noise=0.1), progress_bar=False, log=lambda *a: None)
    m = r.model
    assert not any(":" in w and w.split(":")[-1].isdigit() for w in m.tokenizer.vocab)  # no level words
    cs = m.prepare(cells.iloc[:40])
    u = cs.range_values(np.arange(len(cs)))
    sents = cs.sentences(np.arange(len(cs)), s)
    for i, words in enumerate(sents):
        order = [j for j in np.argsort(-u[i], kind="stable") if u[i, j] > s.level_threshold and cs.present[i, j]]
        assert words == ([cs.markers[j] for j in order] or ["nil"])
        if order:
            np.testing.assert_allclose(cs.word_values(i, words), np.clip(u[i, order], 0, 1.5), rtol=1e-6)
    # with a sentence cache a cell's values are computed once and reused where it is a partner: the same
    # values as building every line afresh, cold and warm
    multi = m.prepare(cells.iloc[:40])
    assert multi.pairs is not None and m.prompt.format == "multi" and m.sentence.partner_words == 2
    fresh = [multi.context(i, m.sentence, m.prompt)[1] for i in range(len(multi))]
    for _ in range(2):
        assert [multi.context(i, m.sentence, m.prompt, sentence_cache=sents)[1] for i in range(len(multi))] == fresh
    # value_noise jitters the carried values of training prompts, never their words
    from dataclasses import replace

    from spatial2sentence.training_data import PromptSampler

    cs = m.prepare(cells)
    cells_idx = np.arange(len(cs))
    plain = PromptSampler(m, cs, cells_idx, replace(tiny_settings(), value_noise=0.0, task_mix={"type": 1.0}))
    noisy = PromptSampler(m, cs, cells_idx, replace(tiny_settings(), value_noise=0.3, task_mix={"type": 1.0}))
    # one prompt each (the noise draws from the same generator, so later prompts would differ)
    a = plain.batch(np.random.default_rng(3), 1)
    b = noisy.batch(np.random.default_rng(3), 1)
    assert a[0] == b[0] and a[1] == b[1]  # same prompt and answer
    va, vb = np.concatenate(a[3]), np.concatenate(b[3])
    assert ((va == 0) == (vb == 0)).all() and not np.allclose(va, vb)


def test_a_model_saved_by_a_newer_version_stays_readable(tiny, cells, tmp_path):
    """Settings this version does not know are ignored with a warning (a newer version's model is still
    read and predicts as before); a training config with an unknown key is still refused."""
    import json
    import shutil

    from spatial2sentence.settings import SentenceSettings, UnknownSettingsWarning

    newer = tmp_path / "newer"
    shutil.copytree(tiny[0], newer)
    cfg = json.loads((newer / "s2s_config.json").read_text())
    cfg["sentence"]["a_future_option"] = 3
    cfg["prompt"]["another_one"] = "x"
    (newer / "s2s_config.json").write_text(json.dumps(cfg))
    with pytest.warns(UnknownSettingsWarning, match="a_future_option"):
        model = S2SModel.from_pretrained(newer, device="cpu")
    before = S2SModel.from_pretrained(tiny[0], device="cpu").predict_cells(cells, threads=1).cells
    after = model.predict_cells(cells, threads=1).cells
    pd.testing.assert_frame_equal(before, after)
    with pytest.raises(S2SInputError, match="unknown settings"):
        SentenceSettings.from_dict({"top_kk": 3}, strict=True)


def test_training_and_building_a_model_give_torch_its_random_state_back(cells, tmp_path):
    """Training seeds torch; a caller's own random numbers must not depend on whether a model was trained
    (or built) in between."""
    import torch

    torch.manual_seed(1234)
    before = torch.get_rng_state().clone()
    train(cells, tmp_path / "m", model_settings=TINY, train_settings=tiny_settings(), progress_bar=False,
          log=lambda *a: None)
    assert torch.equal(torch.get_rng_state(), before)


def test_balanced_accuracy_selection_reads_every_types_recall(cells, tmp_path):
    """select_by="balanced_accuracy" keeps the state with the best mean recall over types: a state that
    calls every cell by the commonest type scores its accuracy under "accuracy" but 1/k here."""
    from spatial2sentence.training import selection_score

    common_only = {"loss": 0.5, "type_acc": 0.8, "type_bacc": 1 / 3}
    every_type = {"loss": 0.6, "type_acc": 0.7, "type_bacc": 0.65}
    assert selection_score(common_only, "accuracy") > selection_score(every_type, "accuracy")
    assert selection_score(every_type, "balanced_accuracy") > selection_score(common_only, "balanced_accuracy")
    with pytest.raises(ModelInputError, match="balanced_accuracy"):
        selection_score(every_type, "recall")
    small = ModelSettings(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)
    r = train(cells, tmp_path / "bacc", model_settings=small,
              train_settings=tiny_settings(steps=12, select_by="balanced_accuracy"), progress_bar=False,
              log=lambda *a: None)
    assert r.history and all(0.0 <= h["type_bacc"] <= 1.0 for h in r.history)
    # the kept state is the best by balanced accuracy among the evaluations
    best = max(selection_score(h, "balanced_accuracy") for h in r.history)
    assert selection_score(r.best, "balanced_accuracy") == pytest.approx(best)


def test_anchor_alone_shows_the_cell_without_its_context(tiny, cells):
    """anchor_alone=1: every type training prompt is the Cell2Sentence view of its cell (no partner or
    around line), status prompts never; 0: the prompts are exactly those of a run without the setting (the generator is not
    touched); in between, both views occur."""
    from dataclasses import replace

    from spatial2sentence.training_data import PromptSampler

    m = S2SModel.from_pretrained(tiny[0], device="cpu")
    assert m.prompt.format == "multi"
    cs = m.prepare(cells)
    idx = np.arange(len(cs))
    base = replace(tiny_settings(), task_mix={"type": 1.0}, panel_subset_prob=0.0)  # whole sentences

    def prompts(ts, n=40):
        sampler = PromptSampler(m, cs, idx, ts)
        rng = np.random.default_rng(5)
        return [sampler.draw(rng) for _ in range(n)]

    with_context = prompts(base)
    assert any("near" in w or "far" in w for w, _, _ in with_context)
    assert prompts(replace(base, anchor_alone=0.0)) == with_context
    alone = prompts(replace(base, anchor_alone=1.0))
    single = replace(m.prompt, format="single")
    for words, values, answer in alone:
        assert not {"near", "far", "around"} & set(words)
        assert words[:2] == ["[BOS]", "cell"] and words[-3:] == ["task", "type", "answer"]
        assert len(values) == len(words) and answer.startswith("T:")
    # the alone view is the single-cell prompt of the same cell: find each by its anchor sentence
    anchors = {tuple(cs.context_words(i, m.sentence, single)): i for i in idx}
    assert all(tuple(w[:-3]) in anchors for w, _, _ in alone)
    mixed = prompts(replace(base, anchor_alone=0.5), n=60)
    n_alone = sum(not {"near", "far"} & set(w) for w, _, _ in mixed)
    assert 10 < n_alone < 50
    # status prompts always keep their context (one cell alone would ask an image's status of one cell)
    status = replace(base, task_mix={"status": 1.0}, anchor_alone=1.0)
    assert all({"near", "far"} & set(w) and w[-2] == "status" for w, _, _ in prompts(status))


def test_subset_prompts_draw_their_cell_types_by_their_own_class_balance(tiny, cells):
    """subset_class_balance: type prompts that see a panel subset draw their cells with
    count(type) ** -subset_class_balance, full-panel prompts with -class_balance (frequencies of the
    answers against the 362 real toy cells' type counts); unset, both draw alike (same prompts)."""
    from dataclasses import replace

    from spatial2sentence.training_data import PromptSampler

    m = S2SModel.from_pretrained(tiny[0], device="cpu")
    cs = m.prepare(cells)
    idx = np.arange(len(cs))
    types, counts = np.unique(cells["cell_type"].astype(str), return_counts=True)
    natural = counts / counts.sum()
    even = np.full(len(types), 1 / len(types))
    assert np.abs(natural - even).max() > 0.15  # the toy crops are far from even

    def answer_shares(ts, n=1500):
        sampler = PromptSampler(m, cs, idx, ts)
        rng = np.random.default_rng(11)
        got = [sampler.draw(rng)[2] for _ in range(n)]
        return np.array([got.count(f"T:{t}") for t in types]) / n

    base = replace(tiny_settings(), task_mix={"type": 1.0}, class_balance=1.0, subset_class_balance=0.0)
    np.testing.assert_allclose(answer_shares(replace(base, panel_subset_prob=0.0)), even, atol=0.05)
    np.testing.assert_allclose(answer_shares(replace(base, panel_subset_prob=1.0)), natural, atol=0.05)
    plain = replace(base, subset_class_balance=None, panel_subset_prob=0.5)
    sampler_a, sampler_b = PromptSampler(m, cs, idx, plain), PromptSampler(m, cs, idx, replace(plain,
                                                                           subset_class_balance=1.0))
    ra, rb = np.random.default_rng(2), np.random.default_rng(2)
    assert [sampler_a.draw(ra) for _ in range(30)] == [sampler_b.draw(rb) for _ in range(30)]


def test_refit_trains_again_on_every_cell_for_the_best_step_count(cells, tmp_path):
    """refit=True: the validation run picks the step count, then a fresh run on every training cell
    (validation cells included) trains that many steps; the saved model records both runs."""
    small = ModelSettings(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)
    ts = tiny_settings(steps=30, refit=True, select_by="accuracy")
    r = train(cells, tmp_path / "refit", model_settings=small, train_settings=ts, progress_bar=False,
              log=lambda *a: None)
    info = r.model.info
    first = info["refit"]["validation_run"]
    assert first["n_val_cells"] > 0 and info["training"]["n_val_cells"] == 0
    assert info["training"]["n_train_cells"] == first["n_train_cells"] + first["n_val_cells"] == len(cells)
    assert info["refit"]["steps"] == r.best["step"] == info["training"]["steps_done"]
    assert r.steps_done == first["steps_done"] + info["refit"]["steps"]
    assert info["training"]["settings"]["steps"] == info["refit"]["steps"]
    # the validation run's checkpoint is kept apart from the refit's, so a resume finds the right one
    assert (tmp_path / "refit" / "checkpoint" / "state.pt").exists()
    assert (tmp_path / "refit" / "checkpoint" / "refit" / "state.pt").exists()
    saved = S2SModel.from_pretrained(tmp_path / "refit", device="cpu")
    assert saved.info["refit"]["steps"] == info["refit"]["steps"]
    pd.testing.assert_frame_equal(saved.predict_cells(cells, threads=1).cells,
                                  r.model.predict_cells(cells, threads=1).cells)
    # without a validation split there is nothing to refit from: one run, as asked
    plain = train(cells, tmp_path / "noval", model_settings=small,
                  train_settings=tiny_settings(steps=10, refit=True, val_fraction=0.0), progress_bar=False,
                  log=lambda *a: None)
    assert "refit" not in plain.model.info and plain.steps_done == 10


def test_validation_prompts_never_show_the_anchor_alone(cells, tmp_path, monkeypatch):
    """anchor_alone shapes training prompts only: validation reads what prediction reads."""
    from spatial2sentence import training as T

    seen = []
    real = T.PromptSampler

    def spy(model, cs, idx, ts):
        seen.append(ts.anchor_alone)
        return real(model, cs, idx, ts)

    monkeypatch.setattr(T, "PromptSampler", spy)
    small = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_positions=64)
    train(cells, tmp_path / "m", model_settings=small, train_settings=tiny_settings(steps=2, anchor_alone=0.5),
          progress_bar=False, log=lambda *a: None)
    assert seen == [0.5, 0.0]  # the training sampler, then the validation one


def test_init_std_sets_the_fresh_weights_scale():
    """``ModelSettings.init_std`` is the standard deviation of a fresh model's weights (embeddings,
    projections) and of its value embedding; models saved without the key get Hugging Face's 0.02."""
    from spatial2sentence.model import build_lm
    from spatial2sentence.numeric import attach_value_embedding
    from spatial2sentence.sentences import type_token
    from spatial2sentence.tokenizer import WordTokenizer

    tok = WordTokenizer.build([f"M{i}" for i in range(40)], [type_token("a"), type_token("b")], (20.0, 50.0))
    sds = {}
    for std in (0.02, 0.1):
        ms = ModelSettings(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, init_std=std)
        lm = build_lm(ms, len(tok), tok, seed=0)
        attach_value_embedding(lm, 0, ms.init_std)
        sds[std] = (float(lm.get_input_embeddings().weight.detach().std()),
                    float(lm.s2s_value_embedding.weight.detach().std()),
                    float(lm.model.layers[0].mlp.up_proj.weight.detach().std()))
    for std, got in sds.items():
        for sd in got:
            assert abs(sd - std) < 0.15 * std, (std, got)
    assert ModelSettings.from_dict({"hidden_size": 64}).init_std == 0.02


def test_weight_average_is_what_training_keeps(cells, tmp_path):
    """``TrainSettings.ema_decay``: the weights train as without it, and what is observed at each step,
    kept, saved and read back is their moving average (updated after every step)."""
    import torch

    from spatial2sentence.training import observe_steps

    decay = 0.7
    runs = {}
    for name, ema in (("init", 0.0), ("plain", 0.0), ("ema", decay)):
        seen = []

        def grab(step, model):
            seen.append({k: v.detach().clone() for k, v in model.lm.state_dict().items()})

        with observe_steps(grab):
            r = train(cells, tmp_path / name, model_settings=TINY,
                      train_settings=tiny_settings(steps=0 if name == "init" else 6, seed=3, eval_every=1,
                                                   val_fraction=0.0, ema_decay=ema),
                      progress_bar=False, log=lambda *a: None)
        runs[name] = (r, seen)
    init = runs["init"][0].model.lm.state_dict()
    plain, ema = runs["plain"][1], runs["ema"][1]
    assert len(plain) == len(ema) == 6
    # the plain run's states are the trajectory (the average never feeds back into training): the
    # averaged run shows, at every step, the update rule's average of them
    for key in ("model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"):
        expect = init[key].clone()
        for step in range(6):
            expect = decay * expect + (1 - decay) * plain[step][key]
            torch.testing.assert_close(ema[step][key], expect)
        kept = runs["ema"][0].model.lm.state_dict()[key]
        torch.testing.assert_close(kept, expect)
        assert not torch.equal(kept, plain[-1][key])
        # saved and read back as the average
        torch.testing.assert_close(S2SModel.from_pretrained(tmp_path / "ema", device="cpu").lm.state_dict()[key],
                                   expect)
