"""spatial2sentence.lite_llama: our Llama models read without transformers give transformers' answers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from spatial2sentence.lite_llama import LiteLlamaForCausalLM, supports
from spatial2sentence.model import DEFAULT_MODEL_DIR, S2SModel
from spatial2sentence.positions import prompt_positions
from spatial2sentence.predict import _left_pad, score_prompts, score_tasks
from spatial2sentence.prompts import task_words
from spatial2sentence.settings import ModelSettings, SentenceSettings, TrainSettings
from spatial2sentence.training import train
from test_model import cells  # noqa: F401 - the 362 real toy cells, a pytest fixture


@pytest.fixture(scope="module", params=["causal", "prefix"])
def values_lines_model(tmp_path_factory, cells, request):
    """A small trained v2 model: values carried into the embeddings, line positions; causal or prefix
    attention (spatial2sentence.positions.attention_mask)."""
    out = tmp_path_factory.mktemp(f"lite_v2_{request.param}")
    threads = torch.get_num_threads()
    train(cells, out, sentence=SentenceSettings(encoding="values", values=True, partner_words=3),
          model_settings=ModelSettings(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                       max_positions=96, positions="lines", attention=request.param),
          train_settings=TrainSettings(steps=30, batch_size=16, lr=3e-3, warmup_steps=5, eval_every=10,
                                       eval_prompts=48, checkpoint_every=10_000, num_threads=1),
          progress_bar=False, log=lambda *a: None)
    torch.set_num_threads(threads)
    return out


def _both(path):
    lite = S2SModel.from_pretrained(path, device="cpu")
    hf = S2SModel.from_pretrained(path, device="cpu", backend="transformers")
    assert isinstance(lite.lm, LiteLlamaForCausalLM) and type(hf.lm).__name__ == "LlamaForCausalLM"
    return lite, hf


def test_default_model_logits_equal_transformers(cells):
    lite, hf = _both(DEFAULT_MODEL_DIR)
    seqs = [p["tokens"] for p in hf.prompts_for(cells.head(40))]
    ids, mask, _ = _left_pad(seqs, hf.tokenizer.pad_id)
    assert len(set(map(len, seqs))) > 1  # left padding is exercised
    pos = prompt_positions(hf.lm, ids, mask)
    with torch.inference_mode():
        for keep in (0, 1):
            a = hf.lm(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
            b = lite.lm(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
            assert a.shape == b.shape
            real = mask.bool()[:, -a.shape[1]:]
            torch.testing.assert_close(b[real], a[real], atol=1e-5, rtol=1e-5)


def test_cached_task_words_predictions_and_explanations_agree(values_lines_model, cells):
    from spatial2sentence.explain import explain_cells

    lite, hf = _both(values_lines_model)
    cs = hf.prepare(cells)
    idx = np.r_[0:30, 200:230]
    ctx, vals = zip(*(hf.encode_context(cs, int(i)) for i in idx))
    suffixes = {t: hf.tokenizer.encode(task_words(t)) for t in ("type", "status")}
    labels = {t: hf.label_ids(t) for t in suffixes}
    a = score_tasks(hf.lm, list(ctx), suffixes, labels, hf.tokenizer.pad_id, "cpu", list(vals))
    b = score_tasks(lite.lm, list(ctx), suffixes, labels, hf.tokenizer.pad_id, "cpu", list(vals))
    for t in suffixes:
        np.testing.assert_allclose(b[t], a[t], atol=1e-5)
        # the task words run on the context's cache give what the whole prompts give
        whole = score_prompts(hf.lm, [c + suffixes[t] for c in ctx], labels[t], hf.tokenizer.pad_id, "cpu",
                              [v + [0.0] * len(suffixes[t]) for v in vals])
        np.testing.assert_allclose(whole, a[t], atol=1e-5)
    assert hf.model_settings.attention == request_attention(hf)
    pa = hf.predict_cells(cells, threads=1).cells
    pb = lite.predict_cells(cells, threads=1).cells
    cols = [c for c in pa.columns if c.startswith("p_")]
    np.testing.assert_allclose(pb[cols].to_numpy(float), pa[cols].to_numpy(float), atol=1e-5)
    assert (pa["cell_type"] == pb["cell_type"]).all()
    objs = list(cells["Object"].iloc[:6])
    ea = explain_cells(hf, cells.iloc[:120], objs, n_steps=16, tolerance=None)
    eb = explain_cells(lite, cells.iloc[:120], objs, n_steps=16, tolerance=None)
    for x, y in zip(ea, eb):
        np.testing.assert_allclose([t["score"] for t in y["tokens"]], [t["score"] for t in x["tokens"]], atol=1e-4)
    # the last-layer shortcut reproduced transformers' full forward for this model (checked on first use)
    assert hf.lm._s2s_answer_shortcut_ok


def request_attention(model):
    """The attention the model's language model was given (:mod:`spatial2sentence.positions`)."""
    from spatial2sentence.positions import prefix_sep

    return "causal" if prefix_sep(model.lm) is None else "prefix"


def test_a_lite_model_saves_what_transformers_reads(tmp_path):
    lite = S2SModel.from_pretrained(DEFAULT_MODEL_DIR, device="cpu")
    lite.save_pretrained(tmp_path / "again")
    with safe_open(str(DEFAULT_MODEL_DIR / "model.safetensors"), "pt") as f, \
            safe_open(str(tmp_path / "again" / "model.safetensors"), "pt") as g:
        assert set(f.keys()) == set(g.keys())
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), g.get_tensor(k)), k
    back = S2SModel.from_pretrained(tmp_path / "again", device="cpu", backend="transformers")
    for k, v in back.lm.state_dict().items():
        if k in lite.lm.state_dict():
            assert torch.equal(v, lite.lm.state_dict()[k]), k


def test_the_default_model_predicts_without_importing_transformers():
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "from test_model import toy_cells\n"
        "from spatial2sentence.model import S2SModel\n"
        "m = S2SModel.from_pretrained(None, device='cpu')\n"
        "p = m.predict_cells(toy_cells().head(50), threads=1, allow_partial_panel=True)\n"
        "assert len(p.cells) == 50\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] == 'transformers'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_other_architectures_go_through_transformers(tmp_path, cells):
    cfg = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert supports(cfg)
    assert not supports({**cfg, "model_type": "gpt2"})
    assert not supports({**cfg, "attention_bias": True})
    assert not supports({**cfg, "rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}})
    from spatial2sentence.normalize import Normalizer

    markers = ["H3", "CD99", "PIN", "CD8a", "CDH"]
    norm = Normalizer().fit(cells[markers].to_numpy(float), markers)
    gpt = S2SModel.create(markers, ["alpha", "beta", "other"], ["Onset"], norm,
                          model=ModelSettings(architecture="gpt2", hidden_size=16, num_layers=1, num_heads=2,
                                              intermediate_size=32), device="cpu")
    gpt.save_pretrained(tmp_path / "gpt")
    back = S2SModel.from_pretrained(tmp_path / "gpt", device="cpu")
    assert type(back.lm).__name__ == "GPT2LMHeadModel"
