"""Constrained prediction: ONE forward pass per prompt, softmax over the label tokens' logits.

Every label is a single token, so the probability of each class is the softmax, restricted to the task's
label tokens, of the logits at the answer position (the last prompt token). Prompts are left-padded
and given explicit position ids, so only the last position's logits are computed
(``logits_to_keep=1``; a Llama model runs its last layer for the answer position alone:
:func:`answer_logits`); the tasks of one cell share their context's forward pass (:func:`score_tasks`).
CUDA runs in bf16 (model weights), CPU in float32; the softmax is float32.

Image-level clinical status: for a model with tissue prompts (v2, :mod:`.tissue`), the status read from
the image's tissue prompt; otherwise the mean over the image's cells of the per-cell log-probabilities of
each status, renormalised with a softmax. The per-cell probabilities are kept in the cell table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .domain import PanelCoverage, apply_temperature, status_is_confident
from .numeric import embed_inputs, has_values
from .positions import attention_mask, prompt_positions, task_positions
from .prompts import task_words
from .sentences import NIL
from .threads import default_workers, parallel_map
from .tissue import tissue_words, type_sample

# transformers is imported where a model is built, loaded or run through its internals: importing it
# takes 2.9 s (python -X importtime), which `s2s --help`, input checks and model-folder checks skip
# prompts per forward pass: 128 ran the default model 20-30% faster than 256 on 2 CPU threads (smaller
# activations stay in cache); measured with benchmarks/inference.py-style runs, see README
PREDICT_BATCH_SIZE = 128
UNKNOWN = "unknown"  # the call of a cell without signal (see predict_cellset)



@dataclass
class Predictions:
    """Result of :func:`predict_cellset` (and :meth:`S2SModel.predict_cells`).

    ``cells``: one row per cell: ``image``, ``Object``, ``cell_type``, ``cell_type_probability``,
    ``p_<type>`` for every type, ``status``, ``status_probability``, ``p_status_<label>`` for every
    clinical label (per-cell values). ``image_status``: one row per image: ``image``, ``status``,
    ``status_probability``, ``p_status_<label>``, ``n_cells`` (aggregated by mean log-probability).
    ``unknown_markers``: the table's markers the model ignored. ``cancelled``: True when the progress
    callback stopped the run (the rows not reached are NaN).
    """
    cells: pd.DataFrame
    image_status: pd.DataFrame
    unknown_markers: list[str]
    used_markers: list[str]
    cancelled: bool = False
    coverage: PanelCoverage | None = None  # which of the model's markers the input carried

    def status_of(self, image: str | None = None) -> dict:
        row = self.image_status.iloc[0] if image is None else self.image_status.set_index("image").loc[image]
        return row.to_dict()


def _left_pad(seqs: list[list[int]], pad_id: int, values: list[list[float]] | None = None):
    """Left-padded ids, attention mask and (when ``values`` is given) the values the words carry
    (:mod:`.numeric`; 0 on padding), else None. Position ids: :func:`.positions.prompt_positions`."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    n = int(lengths.max())
    mask = np.arange(n)[None, :] >= (n - lengths)[:, None]
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    ids[mask] = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
    vals = None
    if values is not None:
        vals = np.zeros(mask.shape, dtype=np.float32)
        vals[mask] = np.fromiter((v for s in values for v in s), dtype=np.float32, count=int(lengths.sum()))
        vals = torch.from_numpy(vals)
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64)), vals


def _embeds(lm, ids, values):
    """Input embeddings carrying values, or None where the model or the prompts carry none (then the
    model embeds ``ids`` itself)."""
    return embed_inputs(lm, ids, values) if values is not None and has_values(lm) else None


def _forward(lm, ids, mask, pos, embeds=None, **kw):
    """``lm`` over whole prompts or contexts from their start (the mask of :func:`.positions.attention_mask`)."""
    mask = attention_mask(lm, ids, mask, lm.dtype)
    if embeds is None:
        return lm(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)
    return lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, **kw)


def score_prompts(lm, seqs: list[list[int]], label_ids: list[int], pad_id: int, device,
                  values: list[list[float]] | None = None) -> np.ndarray:
    """Probabilities (n x len(label_ids)) of each label after each prompt, in one forward pass;
    ``values``: what each word carries (:mod:`.numeric`), for a model that reads them."""
    ids, mask, vals = _left_pad(seqs, pad_id, values)
    ids, mask = ids.to(device), mask.to(device)
    pos = prompt_positions(lm, ids, mask)
    with torch.inference_mode():
        embeds = _embeds(lm, ids, vals)
        return _label_softmax(answer_logits(lm, ids, mask, pos, embeds), label_ids)


def answer_logits(lm, ids, mask, pos, embeds=None):
    """Logits (n x 1 x vocab) at the last position of left-padded prompts (see :func:`_answer_shortcut_ok`);
    ``embeds``: the input embeddings when they carry values (:func:`_embeds`)."""
    if _answer_shortcut_ok(lm, ids, mask, pos, embeds):
        return _llama_answer_logits(lm, ids, mask, pos, embeds)
    return _forward(lm, ids, mask, pos, embeds, logits_to_keep=1, use_cache=False).logits


def context_cache(lm, ids, mask, pos, embeds=None):
    """The keys and values of every layer over left-padded contexts, for task words to be run on top."""
    if _answer_shortcut_ok(lm, ids, mask, pos, embeds):
        return _llama_context_cache(lm, ids, mask, pos, embeds)
    return _forward(lm, ids, mask, pos, embeds, logits_to_keep=1, use_cache=True).cache


def _answer_shortcut_ok(lm, ids, mask, pos, embeds=None) -> bool:
    """Whether this model may run its last decoder layer for the positions that are read only.

    Why: every layer below the last needs all positions, but the last layer's outputs are read at the
    answer position alone (and, for a shared context, only its keys and values are read). For a Llama
    model (the architecture of our models) the last layer then computes keys and values for all positions
    and the query, attention output, MLP and final norm for the answer position only: 23-26% less time
    for the default 3-layer model on CPU (``benchmarks/inference.py`` times both). Other architectures
    run the plain forward.
    Whether the shortcut reproduces the plain forward is checked once per model on its first batch (a
    later ``transformers`` could change Llama's internals); if it does not, the plain forward is used.
    """
    ok = getattr(lm, "_s2s_answer_shortcut_ok", None)
    if ok is not None:
        return ok and not lm.training
    ok = type(lm).__name__ == "LlamaForCausalLM" and getattr(lm.config, "pretraining_tp", 1) == 1
    if ok:
        n = min(len(ids), 4)
        args = ids[:n], mask[:n], pos[:n], (embeds[:n] if embeds is not None else None)
        tol = 1e-4 if lm.dtype == torch.float32 else 5e-2

        def same(a, b):
            return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=tol, rtol=tol))

        try:
            full = _forward(lm, *args[:3], args[3], logits_to_keep=1, use_cache=True)
            fast = _llama_context_cache(lm, *args)
            ok = same(_llama_answer_logits(lm, *args), full.logits) and all(
                same(f.keys, g.keys) and same(f.values, g.values) for f, g in zip(fast.layers, full.cache.layers))
        except Exception:  # noqa: BLE001 - internals differ in this transformers version: plain forward
            ok = False
    lm._s2s_answer_shortcut_ok = ok
    return ok and not lm.training


def _llama_below_last(lm, ids, mask, pos, embeds=None, cache=None):
    """Run every decoder layer but the last over all positions (filling ``cache`` if given).

    Returns the residual stream, the last layer, its normed input, its rotated keys and its values.
    """
    from transformers.masking_utils import create_causal_mask

    base = lm.model
    h = base.embed_tokens(ids) if embeds is None else embeds
    # a prefix model's 4D mask is returned as it is (transformers' custom-mask rule)
    causal = create_causal_mask(config=base.config, inputs_embeds=h,
                                attention_mask=attention_mask(lm, ids, mask, h.dtype), cache=cache, position_ids=pos)
    cos, sin = base.rotary_emb(h, position_ids=pos)
    *below, last = base.layers[:base.config.num_hidden_layers]
    for layer in below:
        h = layer(h, attention_mask=causal, position_embeddings=(cos, sin), position_ids=pos, cache=cache,
                  use_cache=cache is not None)
    x = last.input_layernorm(h)
    k = _rotate(_heads(last.self_attn, last.self_attn.k_proj(x)), cos, sin)
    v = _heads(last.self_attn, last.self_attn.v_proj(x))
    return h, last, x, (k, v), (cos, sin)


def _heads(att, rows):
    """(n, t, heads * head_dim) -> (n, heads, t, head_dim)."""
    return rows.view(rows.shape[0], rows.shape[1], -1, att.head_dim).transpose(1, 2)


def _rotate(v, cos, sin):
    """Rotary position embedding as Llama applies it (the rotate-half convention)."""
    half = v.shape[-1] // 2
    return v * cos.unsqueeze(1) + torch.cat((-v[..., half:], v[..., :half]), -1) * sin.unsqueeze(1)


def _llama_answer_logits(lm, ids, mask, pos, embeds=None):

    h, last, x, (k, v), (cos, sin) = _llama_below_last(lm, ids, mask, pos, embeds)
    att = last.self_attn
    q = _rotate(_heads(att, att.q_proj(x[:, -1:])), cos[:, -1:], sin[:, -1:])
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    # the answer position sees every real token of its prompt: its causal row is the padding mask
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask.bool()[:, None, None, :],
                                                         scale=att.scaling)
    h = h[:, -1:] + att.o_proj(o.transpose(1, 2).reshape(len(ids), 1, -1))
    h = h + last.mlp(last.post_attention_layernorm(h))
    return lm.lm_head(lm.model.norm(h))


def _llama_context_cache(lm, ids, mask, pos, embeds=None):
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.config)
    _, last, _, (k, v), _ = _llama_below_last(lm, ids, mask, pos, embeds, cache=cache)
    cache.update(k, v, last.self_attn.layer_idx)
    return cache


def _label_softmax(logits, label_ids: list[int]) -> np.ndarray:

    last = logits[:, -1, :].float()
    sel = last[:, torch.as_tensor(label_ids, device=last.device)]
    return torch.softmax(sel, dim=-1).cpu().numpy()


def score_tasks(lm, contexts: list[list[int]], suffixes: dict[str, list[int]], label_ids: dict[str, list[int]],
                pad_id: int, device, values: list[list[float]] | None = None) -> dict[str, np.ndarray]:
    """Like :func:`score_prompts` for ``context + suffix`` of every task, with the shared context run once.

    Why: the prompts of one cell differ only in their last few task words, so the context's keys and
    values are computed once and each task's words are run on top of them (the cache is cut back to the
    context between tasks). The probabilities are those of the whole prompts; type + status scoring ran
    at 1,279 cells/s against 588 with two full passes (``benchmarks/inference.py``, 2 CPU threads).
    """
    if len(suffixes) == 1:  # one task: nothing to share, a plain pass without a cache is cheaper
        (task, words), = suffixes.items()
        vals = None if values is None else [v + [0.0] * len(words) for v in values]
        return {task: score_prompts(lm, [c + list(words) for c in contexts], label_ids[task], pad_id, device,
                                    vals)}
    ids, mask, vals = _left_pad(contexts, pad_id, values)
    ids, mask = ids.to(device), mask.to(device)
    pos = prompt_positions(lm, ids, mask)
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        # task words carry no value: they run on top of the cache from their ids alone
        cache = context_cache(lm, ids, mask, pos, _embeds(lm, ids, vals))
        for k, (task, words) in enumerate(suffixes.items()):
            suffix = torch.as_tensor(words, device=device).expand(len(contexts), -1)
            steps = suffix.shape[1]
            res = lm(input_ids=suffix, attention_mask=torch.cat([mask, torch.ones_like(suffix)], 1),
                     position_ids=task_positions(lm, ids, pos, steps),
                     cache=cache, use_cache=True, logits_to_keep=1)
            out[task] = _label_softmax(res.logits, label_ids[task])
            if k < len(suffixes) - 1:
                cache.crop(-steps)
    return out


def tissue_status(model, cs, type_calls: dict | None = None, threads: int | None = None) -> dict:
    """Clinical-status probabilities of every image of ``cs`` from its tissue prompt
    (:mod:`.tissue`; models trained with ``PromptSettings.tissue``), read by the model's
    :attr:`~spatial2sentence.model.S2SModel.status_lm`, temperature-scaled like the cells'.

    A model whose tissue prompts carry the cell-type composition (``PromptSettings.tissue_types``) takes
    it from ``type_calls`` (image -> the type calls of its cells) where given, else from its own type
    calls on a sample of each image's cells (:func:`~spatial2sentence.tissue.type_sample`; ``threads``:
    batches scored at once, as in :func:`predict_cellset`)."""
    images = pd.unique(cs.image)
    calls = dict(type_calls or {})
    if getattr(model.prompt, "tissue_types", False):
        calls.update(_sampled_type_calls(model, cs, [im for im in images if im not in calls], threads))
    p = read_tissues(model, cs, [np.flatnonzero(cs.image == im) for im in images], [calls.get(im) for im in images])
    return dict(zip(images, p))


def read_tissues(model, cs, cell_sets, type_calls=None) -> np.ndarray:
    """Clinical-status probabilities (one row per set) of the tissue prompts of the sets of cells
    ``cell_sets`` of ``cs`` (a whole image each in :func:`tissue_status`; windows of one in the probe
    ``benchmarks/probes/tissue_windows.py``), read as :func:`tissue_status` reads them; ``type_calls``:
    the cell-type calls each prompt carries (``PromptSettings.tissue_types``), one entry per set."""
    calls = list(type_calls) if type_calls is not None else [None] * len(cell_sets)
    suffix = task_words("status")
    seqs, vals = [], []
    for cells, call in zip(cell_sets, calls):
        words, values = tissue_words(cs, cells, call)
        seqs.append(model.tokenizer.encode(words + suffix))
        vals.append(values + [0.0] * len(suffix))
    out = []
    for c0 in range(0, len(seqs), PREDICT_BATCH_SIZE):
        p = score_prompts(model.status_lm, seqs[c0:c0 + PREDICT_BATCH_SIZE], model.label_ids("status"),
                          model.tokenizer.pad_id, model.device,
                          vals[c0:c0 + PREDICT_BATCH_SIZE] if model.sentence.values else None)
        out.append(apply_temperature(p, float(getattr(model, "calibration", {}).get("tissue_temperature", 1.0))))
    # the scorer's dtype kept (the status columns of every output are written from these rows)
    return np.concatenate(out) if out else np.zeros((0, len(model.status_labels)), np.float32)


def _sampled_type_calls(model, cs, images, threads) -> dict:
    """image -> the model's type calls on its :func:`~spatial2sentence.tissue.type_sample` cells."""
    samples = {im: type_sample(cs, np.flatnonzero(cs.image == im)) for im in images}
    idx = np.concatenate([np.zeros(0, np.int64), *samples.values()])
    if not len(idx) or not len(model.type_labels):
        return {}
    # sentences written per prompt (no cache of the whole image's): a sample is a small part of it
    p = _score_cells(model, cs, idx, None, ["type"], PREDICT_BATCH_SIZE, None, threads)[0]["type"]
    calls, ok = _most_probable(p, model.type_labels)
    out, start = {}, 0
    for im, cells in samples.items():
        out[im] = calls[start:start + len(cells)][ok[start:start + len(cells)]]
        start += len(cells)
    return out


def _col(prefix: str, label: str) -> str:
    return prefix + str(label).replace(" ", "_")


def predict_cellset(model, cs, batch_size: int = PREDICT_BATCH_SIZE, tasks=("type", "status"), progress=None,
                    threads: int | None = None, cells=None) -> Predictions:
    """Score every cell of ``cs`` (or only the cells at positions ``cells``, with partners and
    neighbourhoods still read from all of ``cs``: an evaluation of a sample of a large image);
    ``threads``: batches scored at once (default: every available core).

    Each batch runs on ONE torch thread (:mod:`.threads`), so the probabilities are the same bits
    whatever ``threads`` is: in-process, in a Dask worker, on a busy or a quiet machine.
    """
    idx = np.arange(len(cs)) if cells is None else np.asarray(cells, np.int64)
    sents = cs.sentences(np.arange(len(cs)), model.sentence)
    labels = {"type": model.type_labels, "status": model.status_labels}
    # a model trained without clinical labels (or without types) has no such task to run
    tasks = [t for t in tasks if t in ("type", "status") and len(labels[t])]
    probs, cancelled = _score_cells(model, cs, idx, sents, tasks, batch_size, progress, threads)
    # temperature scaling fitted on held-out cells (benchmarks/calibration.py), stored with the model
    for t in tasks:
        probs[t] = apply_temperature(probs[t], float(getattr(model, "calibration", {}).get(f"{t}_temperature", 1.0)))
    table = pd.DataFrame({"image": cs.image[idx], "Object": cs.object_id[idx]})
    img_rows = []
    if "type" in tasks:
        _type_columns(table, probs["type"], labels["type"], cs, idx, sents)
    if "status" in tasks:
        img_rows = _status_columns(table, probs["status"], labels["status"], model, cs, idx, cancelled,
                                   _whole_image_calls(probs["type"], labels["type"], cs, idx)
                                   if "type" in tasks and getattr(model.prompt, "tissue_types", False) else None,
                                   threads)
    return Predictions(table, pd.DataFrame(img_rows), list(cs.unknown_markers), list(cs.used_markers),
                       cancelled)


def _most_probable(p: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
    """The most probable label of each row of ``p`` and whether the row was scored (no NaN)."""
    best = np.nanargmax(np.where(np.isnan(p), -1, p), axis=1)
    return np.asarray(labels, dtype=object)[best], ~np.isnan(p).any(1)


def _whole_image_calls(p: np.ndarray, labels, cs, idx) -> dict:
    """image -> the type calls (the most probable label) of its expression cells, for the images whose
    every cell was scored: the same calls :func:`tissue_status` makes on a sample of the others' cells."""
    scored = pd.Series(cs.image[idx]).value_counts()
    whole = pd.Series(cs.image).value_counts()
    calls, ok = _most_probable(p, labels)
    usable = ~cs.is_phenotype[idx] & ok
    return {im: calls[(cs.image[idx] == im) & usable]
            for im in scored.index[scored.to_numpy() == whole.loc[scored.index].to_numpy()]}


def _score_cells(model, cs, idx, sents, tasks, batch_size, progress, threads) -> tuple[dict, bool]:
    """Class probabilities of the cells ``idx`` for each task (rows in ``idx``'s order; NaN where not
    reached), and whether the progress callback cancelled the run."""
    n = len(idx)
    label_ids = {t: model.label_ids(t) for t in tasks}
    probs = {t: np.full((n, len(label_ids[t])), np.nan, np.float32) for t in tasks}
    task_ids = {t: model.tokenizer.encode(task_words(t)) for t in tasks}
    ph = cs.is_phenotype[idx]
    todo = {t: (np.flatnonzero(~ph) if t == "type" else np.arange(n)) for t in tasks}
    workers = 1 if str(model.device).startswith("cuda") else (threads or default_workers())
    valued = model.sentence.values
    cancelled = False
    done = 0

    def score(chunk_ctx):
        chunk, ctx = chunk_ctx
        needed = {t: np.isin(chunk, todo[t]) for t in tasks}
        run = [t for t in tasks if needed[t].any()]
        scored = score_tasks(model.lm, [c[0] for c in ctx], {t: task_ids[t] for t in run}, label_ids,
                             model.tokenizer.pad_id, model.device,
                             [c[1] for c in ctx] if valued else None) if run else {}
        return chunk, needed, scored

    # blocks of several batches: prompts are sorted by length inside a block so batches carry little
    # padding; progress is reported (and cancelling checked) after every batch
    block = batch_size * 8
    for b0 in range(0, n, block):
        cells = np.arange(b0, min(n, b0 + block))
        ctx = {int(i): model.encode_context(cs, int(idx[i]), sentence_cache=sents) for i in cells}
        cells = cells[np.argsort([len(ctx[int(i)][0]) for i in cells], kind="stable")]
        chunks = [cells[c0:c0 + batch_size] for c0 in range(0, len(cells), batch_size)]
        scored_chunks = parallel_map(score, [(c, [ctx[int(i)] for i in c]) for c in chunks], workers)
        try:
            for chunk, needed, scored in scored_chunks:
                for t, p in scored.items():
                    probs[t][chunk[needed[t]]] = p[needed[t]]
                done += len(chunk)
                if progress is not None and progress(done, n) is False:
                    cancelled = done < n
                    break
        finally:
            scored_chunks.close()
        if cancelled:
            break
    return probs, cancelled


def _type_columns(table: pd.DataFrame, p: np.ndarray, labels, cs, idx, sents) -> None:
    """``cell_type``, ``cell_type_probability``, ``no_signal`` and ``p_<type>`` into ``table``."""
    ph = cs.is_phenotype[idx]
    calls, ok = _most_probable(p, labels)
    ct = np.where(ok, calls, None)
    if ph.any():
        ct = np.where(ph, cs.phenotype[idx], ct)
    # a cell none of whose markers is measurably present has the sentence "nil": its type is
    # "unknown", not the model's majority class (its class probabilities stay in the p_ columns)
    no_signal = np.array([sents[i] == [NIL] for i in idx], bool) & ~ph
    ct = np.where(no_signal & ok, UNKNOWN, ct)
    table["cell_type"] = ct
    table["cell_type_probability"] = np.where(ok & ~no_signal, p.max(1, initial=0), np.where(ph, 1.0, np.nan))
    table["no_signal"] = no_signal
    for j, lab in enumerate(labels):
        table[_col("p_", lab)] = p[:, j]


def _status_columns(table: pd.DataFrame, p: np.ndarray, labels, model, cs, idx, cancelled: bool,
                    type_calls: dict | None = None, threads: int | None = None) -> list[dict]:
    """Per-cell ``status``, ``status_probability``, ``p_status_<label>`` into ``table``; returns the
    per-image rows (read from the tissue for a v2 model, else the mean of the cells' log-probabilities).
    ``type_calls``: image -> its cells' type calls, for tissue prompts that carry the composition."""
    ok = ~np.isnan(p).any(1)
    best = np.argmax(np.where(ok[:, None], p, -1), axis=1)
    table["status"] = np.where(ok, np.asarray(labels, dtype=object)[best], None)
    table["status_probability"] = np.where(ok, p.max(1, initial=0), np.nan)
    for j, lab in enumerate(labels):
        table[_col("p_status_", lab)] = p[:, j]
    tissue = (tissue_status(model, cs, type_calls, threads) if getattr(model.prompt, "tissue", False)
              and not cancelled else {})
    rows = []
    images = cs.image[idx]
    for im in pd.unique(images):
        sel = (images == im) & ok
        row = {"image": im, "n_cells": int((images == im).sum())}
        if im in tissue:  # read from the whole tissue (v2)
            agg = tissue[im]
        elif sel.any():
            mlp = np.log(np.clip(p[sel], 1e-12, 1)).mean(0)
            agg = np.exp(mlp - mlp.max())
            agg /= agg.sum()
        else:
            agg = None
        if agg is None:
            row.update(status=None, status_probability=np.nan, status_confident=False)
        else:
            row.update(status=labels[int(agg.argmax())], status_probability=float(agg.max()),
                       status_confident=status_is_confident(float(agg.max()), len(agg)))
            row.update({_col("p_status_", lab): float(v) for lab, v in zip(labels, agg)})
        rows.append(row)
    return rows
