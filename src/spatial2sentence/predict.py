"""Constrained prediction: ONE forward pass per prompt, softmax over the label tokens' logits.

Every label is a single token, so the probability of each class is the softmax, restricted to the task's
label tokens, of the logits at the answer position (the last prompt token). Prompts are left-padded
and given explicit position ids, so only the last position's logits are computed
(``logits_to_keep=1``); the tasks of one cell share their context's forward pass (:func:`score_tasks`). CUDA runs in bf16 (model weights), CPU in float32; the softmax is float32.

Image-level clinical status: the mean over the image's cells of the per-cell log-probabilities of each
status, renormalised with a softmax; the per-cell probabilities are kept in the cell table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .prompts import task_words

# prompts per forward pass: 128 ran the default model 20-30% faster than 256 on 2 CPU threads (smaller
# activations stay in cache); measured with benchmarks/inference.py-style runs, see README
PREDICT_BATCH_SIZE = 128


def _left_pad(seqs: list[list[int]], pad_id: int):
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.as_tensor(s)
        mask[i, n - len(s):] = 1
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


def score_prompts(lm, seqs: list[list[int]], label_ids: list[int], pad_id: int, device) -> np.ndarray:
    """Probabilities (n x len(label_ids)) of each label after each prompt, in one forward pass."""
    import torch

    ids, mask, pos = _left_pad(seqs, pad_id)
    with torch.inference_mode():
        out = lm(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                 logits_to_keep=1, use_cache=False)
        return _label_softmax(out.logits, label_ids)


def _label_softmax(logits, label_ids: list[int]) -> np.ndarray:
    import torch

    last = logits[:, -1, :].float()
    sel = last[:, torch.as_tensor(label_ids, device=last.device)]
    return torch.softmax(sel, dim=-1).cpu().numpy()


def score_tasks(lm, contexts: list[list[int]], suffixes: dict[str, list[int]], label_ids: dict[str, list[int]],
                pad_id: int, device) -> dict[str, np.ndarray]:
    """Like :func:`score_prompts` for ``context + suffix`` of every task, with the shared context run once.

    Why: the prompts of one cell differ only in their last few task words, so the context's keys and
    values are computed once and each task's words are run on top of them (the cache is cut back to the
    context between tasks). The probabilities are those of the whole prompts; type + status scoring ran
    at 1,279 cells/s against 588 with two full passes (``benchmarks/inference.py``, 2 CPU threads).
    """
    import torch

    if len(suffixes) == 1:  # one task: nothing to share, a plain pass without a cache is cheaper
        (task, words), = suffixes.items()
        return {task: score_prompts(lm, [c + list(words) for c in contexts], label_ids[task], pad_id, device)}
    ids, mask, pos = _left_pad(contexts, pad_id)
    ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        cache = lm(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1,
                   use_cache=True).cache
        for k, (task, words) in enumerate(suffixes.items()):
            suffix = torch.as_tensor(words, device=device).expand(len(contexts), -1)
            steps = suffix.shape[1]
            res = lm(input_ids=suffix, attention_mask=torch.cat([mask, torch.ones_like(suffix)], 1),
                     position_ids=pos[:, -1:] + 1 + torch.arange(steps, device=device),
                     cache=cache, use_cache=True, logits_to_keep=1)
            out[task] = _label_softmax(res.logits, label_ids[task])
            if k < len(suffixes) - 1:
                cache.crop(-steps)
    return out


def _col(prefix: str, label: str) -> str:
    return prefix + str(label).replace(" ", "_")


def predict_cellset(model, cs, batch_size: int = PREDICT_BATCH_SIZE, tasks=("type", "status"), progress=None):
    from .model import Predictions

    n = len(cs)
    sents = cs.sentences(np.arange(n), model.sentence)
    tasks = [t for t in tasks if t in ("type", "status")]
    label_ids = {t: model.label_ids(t) for t in tasks}
    labels = {"type": model.type_labels, "status": model.status_labels}
    probs = {t: np.full((n, len(label_ids[t])), np.nan, np.float32) for t in tasks}
    task_ids = {t: model.tokenizer.encode(task_words(t)) for t in tasks}
    ph = cs.is_phenotype
    todo = {t: (np.flatnonzero(~ph) if t == "type" else np.arange(n)) for t in tasks}
    cancelled = False
    done = 0
    # blocks of several batches: prompts are sorted by length inside a block so batches carry little
    # padding; progress is reported (and cancelling checked) after every batch
    block = batch_size * 8
    for b0 in range(0, n, block):
        cells = np.arange(b0, min(n, b0 + block))
        ctx = {int(i): model.tokenizer.encode(cs.context_words(int(i), model.sentence, model.prompt,
                                                               sentence_cache=sents)) for i in cells}
        cells = cells[np.argsort([len(ctx[int(i)]) for i in cells], kind="stable")]
        for c0 in range(0, len(cells), batch_size):
            chunk = cells[c0:c0 + batch_size]
            needed = {t: np.isin(chunk, todo[t]) for t in tasks}
            run = [t for t in tasks if needed[t].any()]
            if run:
                scored = score_tasks(model.lm, [ctx[int(i)] for i in chunk], {t: task_ids[t] for t in run},
                                     label_ids, model.tokenizer.pad_id, model.device)
                for t in run:
                    probs[t][chunk[needed[t]]] = scored[t][needed[t]]
            done += len(chunk)
            if progress is not None and progress(done, n) is False:
                cancelled = done < n
                break
        if cancelled:
            break

    table = pd.DataFrame({"image": cs.image, "Object": cs.object_id})
    if "type" in tasks:
        p = probs["type"]
        best = np.nanargmax(np.where(np.isnan(p), -1, p), axis=1)
        ok = ~np.isnan(p).any(1)
        ct = np.where(ok, np.asarray(labels["type"], dtype=object)[best], None)
        if ph.any():
            ct = np.where(ph, cs.phenotype, ct)
        table["cell_type"] = ct
        table["cell_type_probability"] = np.where(ok, p.max(1, initial=0), np.where(ph, 1.0, np.nan))
        for j, lab in enumerate(labels["type"]):
            table[_col("p_", lab)] = p[:, j]
    img_rows = []
    if "status" in tasks:
        p = probs["status"]
        ok = ~np.isnan(p).any(1)
        best = np.argmax(np.where(ok[:, None], p, -1), axis=1)
        table["status"] = np.where(ok, np.asarray(labels["status"], dtype=object)[best], None)
        table["status_probability"] = np.where(ok, p.max(1, initial=0), np.nan)
        for j, lab in enumerate(labels["status"]):
            table[_col("p_status_", lab)] = p[:, j]
        for im in pd.unique(cs.image):
            sel = (cs.image == im) & ok
            row = {"image": im, "n_cells": int((cs.image == im).sum())}
            if sel.any():
                mlp = np.log(np.clip(p[sel], 1e-12, 1)).mean(0)
                agg = np.exp(mlp - mlp.max())
                agg /= agg.sum()
                row.update(status=labels["status"][int(agg.argmax())], status_probability=float(agg.max()))
                row.update({_col("p_status_", lab): float(v) for lab, v in zip(labels["status"], agg)})
            else:
                row.update(status=None, status_probability=np.nan)
            img_rows.append(row)
    return Predictions(table, pd.DataFrame(img_rows), list(cs.unknown_markers), list(cs.used_markers),
                       cancelled)
