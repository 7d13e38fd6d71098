"""Line positions (spatial2sentence.positions): one position id per prompt line, the same in training,
prediction (whole prompts and cached task words) and explanations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spatial2sentence.model import S2SModel
from spatial2sentence.positions import prompt_positions, training_positions
from spatial2sentence.predict import _left_pad, score_prompts, score_tasks
from spatial2sentence.prompts import task_words
from spatial2sentence.settings import ModelSettings, TrainSettings
from spatial2sentence.training import _encode_batch, _logits, train
from test_model import cells  # noqa: F401 - the 362 real toy cells, a pytest fixture


@pytest.fixture(scope="module", params=["lines", "lines_anchor_last", "lines prefix", "lines sentence"])
def lines_model(tmp_path_factory, cells, request):
    """A small trained model numbering by line; "prefix": with prefix attention too."""
    positions, _, attention = request.param.partition(" ")
    out = tmp_path_factory.mktemp(request.param.replace(" ", "_"))
    threads = torch.get_num_threads()
    logged = []
    train(cells, out, model_settings=ModelSettings(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                                   max_positions=96, positions=positions,
                                                   attention=attention or "causal"),
          train_settings=TrainSettings(steps=25, batch_size=16, lr=3e-3, warmup_steps=5, eval_every=10,
                                       eval_prompts=48, checkpoint_every=10_000, num_threads=1),
          progress_bar=False, log=lambda *a: logged.append(" ".join(map(str, a))))
    torch.set_num_threads(threads)
    model = S2SModel.from_pretrained(out, device="cpu")
    model.training_log = logged
    return model


def test_training_warns_when_attention_makes_ranked_words_a_bag(lines_model):
    """These models read v1 ranked sentences (no values: the order is the level); reading a line both ways
    with one position per line loses that order, and training says so."""
    assert lines_model.sentence.order_is_level()
    warned = any("bag of words" in line for line in lines_model.training_log)
    assert warned == (lines_model.model_settings.attention != "causal")


def _contexts(model, cells, idx):
    cs = model.prepare(cells)
    sents = cs.sentences(np.arange(len(cs)), model.sentence)
    return [model.tokenizer.encode(cs.context_words(int(i), model.sentence, model.prompt, sentence_cache=sents))
            for i in idx]


def test_every_word_of_a_line_shares_its_position(lines_model, cells):
    model = lines_model
    anchor_last = model.model_settings.positions == "lines_anchor_last"
    tok = model.tokenizer
    ctx = _contexts(model, cells, range(30))
    seqs = [c + tok.encode(task_words("type")) for c in ctx]
    assert len({len(s) for s in seqs}) > 1  # left padding is exercised
    ids, mask, _ = _left_pad(seqs, tok.pad_id)
    pos = prompt_positions(model.lm, ids, mask)
    sep = tok.vocab[";"]
    for row, s in zip(pos, seqs):
        real = row[-len(s):].tolist()
        n_lines = [tok.inv[t] for t in s].count(";")
        assert n_lines >= 2  # anchor + partners / around line
        # numbers go up by one after each ';' and the task words make the last line
        want, k = [], 0
        for t in s:
            want.append(k)
            k += t == sep
        if anchor_last:  # the anchor's line (0) just before the task line, the others up by one
            want = [n_lines - 1 if w == 0 else w - 1 if w < n_lines else w for w in want]
            assert real[0] == real[1] == n_lines - 1 and min(real) == 0
        assert real == want and real[-1] == n_lines
    # right padding (training) numbers the same tokens the same way
    enc_ids, enc_mask, _, _ = _encode_batch([s[:-1] for s in seqs], [s[-1] for s in seqs], tok.pad_id, tok.eos_id,
                                            "cpu")
    tr_pos = training_positions(model.lm, enc_ids)
    for r, s in enumerate(seqs):
        assert tr_pos[r, :len(s)].tolist() == pos[r, -len(s):].tolist()


def test_a_per_token_model_keeps_one_position_per_word(cells, tmp_path):
    from spatial2sentence.normalize import Normalizer

    markers = ["H3", "CD99", "PIN", "CD8a", "CDH"]
    model = S2SModel.create(markers, ["alpha", "beta", "other"], ["Onset"],
                            Normalizer().fit(cells[markers].to_numpy(float), markers),
                            model=ModelSettings(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                                positions="tokens"), device="cpu")
    assert model.model_settings.positions == "tokens"
    ids, mask, _ = _left_pad([[5, 6, 7], [5, 6, 7, 8, 6]], model.tokenizer.pad_id)
    assert prompt_positions(model.lm, ids, mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert training_positions(model.lm, ids) is None  # the model's own 0..t-1


def test_training_prediction_and_cached_tasks_read_the_same_numbers(lines_model, cells):
    """The answer logits of a right-padded training batch, of left-padded whole prompts and of task words
    run on a cached context agree: all three number the prompt's lines alike."""
    model = lines_model
    tok = model.tokenizer
    ctx = _contexts(model, cells, np.r_[0:20, 200:220])
    suffixes = {t: tok.encode(task_words(t)) for t in ("type", "status")}
    labels = {t: model.label_ids(t) for t in suffixes}
    shared = score_tasks(model.lm, ctx, suffixes, labels, tok.pad_id, "cpu")
    for t, words in suffixes.items():
        whole = score_prompts(model.lm, [c + words for c in ctx], labels[t], tok.pad_id, "cpu")
        np.testing.assert_allclose(shared[t], whole, atol=1e-5)
        seqs = [c + words for c in ctx]
        ids, mask, _, _ = _encode_batch(seqs, [labels[t][0]] * len(seqs), tok.pad_id, tok.eos_id, "cpu")
        with torch.inference_mode():
            logits = _logits(model.lm, ids, mask)
        at_answer = torch.stack([logits[r, len(s) - 1, labels[t]] for r, s in enumerate(seqs)])
        np.testing.assert_allclose(torch.softmax(at_answer.float(), -1).numpy(), whole, atol=1e-5)


def test_line_numbers_change_what_the_model_reads(lines_model, cells):
    """The same weights read per token give other probabilities: the numbering is not a no-op."""
    from spatial2sentence.positions import use_line_positions

    model = lines_model
    tok = model.tokenizer
    seqs = [c + tok.encode(task_words("type")) for c in _contexts(model, cells, range(20))]
    lines = score_prompts(model.lm, seqs, model.label_ids("type"), tok.pad_id, "cpu")
    use_line_positions(model.lm, None)
    try:
        tokens = score_prompts(model.lm, seqs, model.label_ids("type"), tok.pad_id, "cpu")
    finally:
        model.number_prompts()
    assert np.abs(lines - tokens).max() > 1e-4
    if model.model_settings.attention != "causal":
        return  # 25 steps leave the prefix models near uniform (p ~ 0.33): the anchor's number moves < 1e-4
    # and the anchor's place in the numbering matters too
    use_line_positions(model.lm, tok.vocab[";"], anchor_last=model.model_settings.positions == "lines")
    try:
        other = score_prompts(model.lm, seqs, model.label_ids("type"), tok.pad_id, "cpu")
    finally:
        model.number_prompts()
    assert np.abs(lines - other).max() > 1e-4
    np.testing.assert_allclose(score_prompts(model.lm, seqs, model.label_ids("type"), tok.pad_id, "cpu"), lines)


def test_anchor_last_numbering_by_hand():
    from spatial2sentence.positions import line_numbers

    # [BOS] cell : A B ; near : C ; around : D ; task type answer  (';' = 9), then right padding (0)
    ids = torch.tensor([[1, 2, 3, 5, 6, 9, 4, 3, 7, 9, 8, 3, 7, 9, 10, 11, 12, 0, 0],
                        [1, 2, 3, 5, 9, 10, 11, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    assert line_numbers(ids, 9).tolist() == [
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3],
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]
    # the anchor next to the task line; a single-cell prompt (second row) is numbered as before
    assert line_numbers(ids, 9, anchor_last=True).tolist() == [
        [2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 1, 1, 1, 1, 3, 3, 3, 3, 3],
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]
    assert line_numbers(torch.tensor([[1, 2, 3]]), 9, anchor_last=True).tolist() == [[0, 0, 0]]


def test_prefix_attention_mask_by_hand():
    """Prefix attention: the words of the lines before the task line see each other both ways; the task
    words see everything before them and not what follows; padding is never seen."""
    from spatial2sentence.positions import attention_mask, use_prefix_attention

    class LM:
        pass

    lm = LM()
    # [BOS] cell : A ; task type answer X [EOS] pad   (';' = 9, pad = 0)
    ids = torch.tensor([[1, 2, 3, 5, 9, 10, 11, 12, 13, 14, 0]])
    mask = (ids != 0).long()
    assert attention_mask(lm, ids, mask) is mask  # a causal model: the plain padding mask
    use_prefix_attention(lm, 9)
    seen = attention_mask(lm, ids, mask)[0, 0] == 0
    prefix = range(5)  # [BOS] .. ';'
    for i in range(11):
        for j in range(11):
            want = (j <= i or (i in prefix and j in prefix)) and j != 10 or i == j
            assert bool(seen[i, j]) == want, (i, j)
    # a context without task words (cached for the task words) is all prefix
    ctx = ids[:, :5]
    assert bool((attention_mask(lm, ctx, torch.ones_like(ctx)) == 0).all())
    # sentence attention: both ways within a line, earlier lines causally
    # [BOS] cell : A ; near : B ; task type answer X   (lines 0: 0-4, 1: 5-8, task line 2: 9-12)
    ids = torch.tensor([[1, 2, 3, 5, 9, 4, 3, 6, 9, 10, 11, 12, 13]])
    use_prefix_attention(lm, 9, "sentence")
    seen = attention_mask(lm, ids, None)[0, 0] == 0
    line = [0] * 5 + [1] * 4 + [2] * 4
    for i in range(13):
        for j in range(13):
            assert bool(seen[i, j]) == (j <= i or (line[i] == line[j] < 2)), (i, j)


def test_prefix_attention_changes_what_the_model_reads(lines_model, cells):
    """The same weights read causally give other probabilities: the mask is not a no-op, and it is put
    back as the model says."""
    from spatial2sentence.positions import prefix_sep, use_prefix_attention

    model = lines_model
    tok = model.tokenizer
    seqs = [c + tok.encode(task_words("type")) for c in _contexts(model, cells, range(20))]
    before = score_prompts(model.lm, seqs, model.label_ids("type"), tok.pad_id, "cpu")
    use_prefix_attention(model.lm, tok.vocab[";"], "prefix" if prefix_sep(model.lm) is None else "causal")
    try:
        toggled = score_prompts(model.lm, seqs, model.label_ids("type"), tok.pad_id, "cpu")
    finally:
        model.number_prompts()
    assert np.abs(before - toggled).max() > 1e-4
    assert (prefix_sep(model.lm) is not None) == (model.model_settings.attention != "causal")


def test_explanations_read_what_prediction_reads(lines_model, cells):
    """The explainer numbers the prompt as prediction does: its probabilities are the predicted ones."""
    from spatial2sentence.explain import explain_cells

    model = lines_model
    pred = model.predict_cells(cells.iloc[:60], threads=1).cells.set_index("Object")
    objs = pred.index[:8].tolist()
    for att in explain_cells(model, cells.iloc[:60], objs, n_steps=4, tolerance=None):
        want = {lab: pred.loc[att["object"], f"p_{lab}"] for lab in model.type_labels}
        for lab, p in att["probabilities"].items():
            assert p == pytest.approx(want[lab], abs=1e-4)


def test_new_models_number_by_line_and_stored_ones_keep_their_numbering(cells, tmp_path):
    """ModelSettings() numbers by line; a model folder saved before the setting existed (no
    "positions" key) still numbers per token, as it was trained."""
    import json

    from spatial2sentence.normalize import Normalizer

    assert ModelSettings().positions == "lines"
    markers = ["H3", "CD99", "PIN", "CD8a", "CDH"]
    norm = Normalizer().fit(cells[markers].to_numpy(float), markers)
    m = S2SModel.create(markers, ["alpha", "beta", "other"], ["Onset"], norm,
                        model=ModelSettings(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                        device="cpu")
    m.save_pretrained(tmp_path / "m")
    assert S2SModel.from_pretrained(tmp_path / "m", device="cpu").model_settings.positions == "lines"
    cfg_path = tmp_path / "m" / "s2s_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["model"]["positions"]
    cfg_path.write_text(json.dumps(cfg))
    old = S2SModel.from_pretrained(tmp_path / "m", device="cpu")
    assert old.model_settings.positions == "tokens"
    ids, mask, _ = _left_pad([[5, 6, 7, 6, 8]], old.tokenizer.pad_id)
    assert prompt_positions(old.lm, ids, mask).tolist() == [[0, 1, 2, 3, 4]]
    with pytest.raises(Exception, match="unknown positions"):
        S2SModel.create(markers, ["a"], ["S"], norm, model=ModelSettings(positions="words"), device="cpu")


def test_attention_is_saved_with_the_model_and_checked(cells, tmp_path):
    """A sentence-attention model reads back with its attention (its language model gets the mask); a
    folder saved before the setting existed is causal; an unknown mode or a non-Llama model is refused
    with a message naming the setting."""
    import json

    from spatial2sentence.normalize import Normalizer
    from spatial2sentence.positions import prefix_sep

    markers = ["H3", "CD99", "PIN", "CD8a", "CDH"]
    norm = Normalizer().fit(cells[markers].to_numpy(float), markers)
    small = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    m = S2SModel.create(markers, ["alpha", "beta"], ["Onset"], norm, model=ModelSettings(attention="sentence", **small),
                        device="cpu")
    m.save_pretrained(tmp_path / "m")
    back = S2SModel.from_pretrained(tmp_path / "m", device="cpu")
    assert back.model_settings.attention == "sentence" and prefix_sep(back.lm) == back.tokenizer.vocab[";"]
    cfg_path = tmp_path / "m" / "s2s_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["model"]["attention"]
    cfg_path.write_text(json.dumps(cfg))
    old = S2SModel.from_pretrained(tmp_path / "m", device="cpu")
    assert old.model_settings.attention == "causal" and prefix_sep(old.lm) is None
    with pytest.raises(Exception, match="unknown attention 'both'"):
        S2SModel.create(markers, ["a"], ["S"], norm, model=ModelSettings(attention="both", **small), device="cpu")
    with pytest.raises(Exception, match="sentence attention is for the fresh Llama"):
        S2SModel.create(markers, ["a"], ["S"], norm,
                        model=ModelSettings(attention="sentence", architecture="gpt2", **small), device="cpu")
