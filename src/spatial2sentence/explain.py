"""Token attributions behind every prediction: integrated gradients on the input embeddings.

What is attributed
------------------
For a cell and a target class (default: the predicted one), the function explained is the class's
log-probability **constrained to the task's label set**, exactly as prediction computes it
(:func:`~spatial2sentence.predict.score_prompts`): ``f(x) = log_softmax(logits[answer position, labels])[target]``.
Its difference between the prompt and a baseline is split over every input token (word) of the prompt.

Method
------
Integrated gradients (Sundararajan et al. 2017) over ``inputs_embeds``, our own implementation (not
captum), because prompts of several cells are left-padded into one batch with their own attention masks
and position ids (as prediction does), and the quadrature points of several cells go into one forward +
backward pass (``internal_batch_size`` rows). It is the same estimator as captum's
``LayerIntegratedGradients`` on the embedding layer with ``method="gausslegendre"`` (the tests check
that the two agree):

    attr_t = sum_d (x_td - b_td) * sum_k w_k * df/dx_td (b + a_k (x - b))

with Gauss-Legendre nodes ``a_k`` and weights ``w_k`` on [0, 1] (``n_steps`` of them; ``method=
"riemann_trapezoid"`` is available too). A token's score is the sum over the embedding dimensions.

Baseline (``baseline=``): ``"pad"`` (default): every content position of the prompt gets the embedding
of ``[PAD]``; ``[BOS]`` and the task words (``task <task> answer``) are kept, so the baseline is "the
same question about a cell with no content" and ``f(baseline)`` is the model's answer without any
evidence. (Blanking the task words too would hand most of the attribution to ``task`` / ``answer``,
which says nothing about the cell.) ``"unk"`` uses ``[UNK]``. ``"zeros"`` (the zero vector) is offered
for comparison but not recommended with Llama models: RMSNorm is singular at 0, so the integrand is
extremely steep near the baseline and completeness fails even with 64+ steps. Positions, attention
mask and length are those of the prompt.

Completeness: the scores sum to ``f(x) - f(baseline)`` up to the quadrature error, reported per cell
as ``completeness_error`` (absolute, in log-probability units) beside ``f_input`` and ``f_baseline``.
Steps are adaptive: ``n_steps`` (default 16) first; a cell whose error exceeds ``tolerance`` (5%) of
max(|f(x) - f(baseline)|, 0.1) is redone with twice the steps, up to ``max_steps`` (256). Confident
predictions (f(x) - f(b) of 6-8 nats, a sharp sigmoid along the path) are the ones that need more.

Aggregation
-----------
Every prompt word belongs to one part (``tokens[i]["part"]``):

* ``"anchor"``: the anchor cell's marker words (its sentence, ``nil`` or ``phenotype ...`` included);
* ``"around"``: the v2 neighbourhood line's words (``around`` and its markers; one score ``around_score``);
* ``"partner:<Object>"``: one partner line's words: role word (``near``/``far``), distance word,
  direction word and the partner's marker words;
* ``"template"``: ``[BOS]``, ``cell`` and the punctuation ``:`` / ``;``;
* ``"task"``: ``task <task> answer``.

``markers``: the anchor's marker words with their scores, highest first (``marker``: the marker, ``word``:
its word, ``CD3`` or, in a levels sentence, ``CD3:7``); ``partners``: each partner
(prompt order: positives then negatives) with role, distance (um), direction and the sum of its part.

Output per cell (the structure the napari plugin reads)::

    {object, image, task, predicted, target, probabilities: {class: p},
     tokens: [{token, score, part}], markers: [{marker, word, score}],
     partners: [{object, role, distance_um, direction, score}],
     baseline, n_steps, method, f_input, f_baseline, completeness_error}
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .errors import ModelInputError
from .measure import measure_image
from .numeric import embed_inputs
from .positions import attention_mask, line_sep, training_positions
from .prompts import BOS
from .sentences import word_marker

BASELINES = ("pad", "unk", "zeros")
# the whole-image overview map: integrated gradients with one quadrature point (the gradient at the
# midpoint times input - baseline) and no refinement, many cells per pass (issue 20: every cell of a
# 5,000-cell image while the user looks at it); the panel of one clicked cell keeps the refined
# attribution. benchmarks/explain_overview.py, 5,351 cells, 2 CPU threads, quiet machine: 2 points 36.3 s,
# deletion test +0.433 (refined +0.449); 1 point 23.2 s, +0.406, same top marker as refined in 96 of 100
OVERVIEW = {"n_steps": 1, "tolerance": None, "internal_batch_size": 512}
# the first shading after a click: the 16-point pass that the refined attribution starts with, without
# the doubling until completeness holds (a cell needing 64+ points took 0.4 s: issue 20 wants the words
# shaded in < 0.2 s); the panel shows it at once and the refined attribution replaces it when it differs
FIRST_PASS = {"n_steps": 16, "tolerance": None}
METHODS = ("gausslegendre", "riemann_trapezoid")
PUNCTUATION = (":", ";")


# ------------------------------------------------------------------------------------------- parts
def prompt_parts(words: list[str], partners: list[dict], n_task: int = 3) -> list[str]:
    """The part of every word of a prompt (see module doc). ``partners``: ``prompts_for``'s list, in
    prompt order (one ``;``-terminated line each after the anchor sentence)."""
    parts = ["template"] * len(words)
    body_end = len(words) - n_task
    for i in range(body_end, len(words)):
        parts[i] = "task"
    # [BOS] cell : <anchor> ;
    i = 0
    while i < body_end and words[i] in (BOS, "cell", ":"):
        i += 1
        if words[i - 1] == ":":
            break
    while i < body_end and words[i] != ";":
        parts[i] = "anchor"
        i += 1
    i += 1  # the anchor's ';'
    for p in partners:
        name = f"partner:{p['Object']}"
        while i < body_end and words[i] != ";":
            if words[i] not in PUNCTUATION:
                parts[i] = name
            i += 1
        i += 1
    if i < body_end and words[i] == "around":  # v2 neighbourhood line: "around : <words> ;"
        while i < body_end and words[i] != ";":
            if words[i] not in PUNCTUATION:
                parts[i] = "around"
            i += 1
    return parts


def _quadrature(n_steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n_steps)
        return (x + 1) / 2, w / 2
    if method == "riemann_trapezoid":
        if n_steps < 2:
            raise ValueError("riemann_trapezoid needs n_steps >= 2")
        a = np.linspace(0.0, 1.0, n_steps)
        w = np.full(n_steps, 1.0 / (n_steps - 1))
        w[[0, -1]] /= 2
        return a, w
    raise ValueError(f"unknown method {method!r} ({', '.join(METHODS)})")


@dataclass
class Attribution:
    """Raw result for one prompt: per-token scores, label probabilities, f at input and baseline."""
    scores: np.ndarray  # (len(prompt),)
    probabilities: np.ndarray  # (n_labels,)
    target: int
    f_input: float
    f_baseline: float

    @property
    def completeness_error(self) -> float:
        return float(abs(self.scores.sum() - (self.f_input - self.f_baseline)))


def _embedding_layer(lm):
    return lm.get_input_embeddings()


def _baseline_vector(lm, tokenizer, baseline: str):

    emb = _embedding_layer(lm).weight
    if baseline == "pad":
        return emb[tokenizer.pad_id].detach().clone()
    if baseline == "unk":
        return emb[tokenizer.unk_id].detach().clone()
    if baseline == "zeros":
        return torch.zeros(emb.shape[1], dtype=emb.dtype, device=emb.device)
    raise ValueError(f"unknown baseline {baseline!r} ({', '.join(BASELINES)})")


def _target_fn(lm, emb, pos, keep, row_pos, label_ids, targets, attn=None):
    """Constrained log-probability of each row's target: (rows,), and the label log-probs (rows, L).

    Rows are right-padded and run WITHOUT a padding mask: no real position sees the padding after it
    (causal attention; with prefix attention the padding is on the task line, after the prefix), so the
    result equals the unpadded prompt's. ``keep``:
    the distinct last positions of the rows (HF ``logits_to_keep`` as an index tensor); ``row_pos``:
    each row's index into ``keep``. A model numbering its prompts by line (:mod:`.positions`) gets an
    all-ones mask: without one, transformers reads position ids that do not count up as packed sequences
    and lets each token see only its own line's restart (every cell then got the same answer). ``attn``: the
    rows' 4D mask for a model with prefix attention (:func:`.positions.attention_mask`; right padding sits
    on the task line, so no prefix word sees it either)."""
    if attn is not None:
        mask = attn.to(emb.dtype)
    else:
        mask = None if line_sep(lm) is None else torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)
    out = lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, logits_to_keep=keep, use_cache=False)
    logits = out.logits[torch.arange(emb.shape[0], device=emb.device), row_pos]
    logp = torch.log_softmax(logits[:, label_ids].float(), dim=-1)
    return logp.gather(1, targets[:, None])[:, 0], logp


def attribute_prompts(lm, tokenizer, seqs: list[list[int]], label_ids: list[int], targets=None,
                      n_steps: int = 16, method: str = "gausslegendre", baseline: str = "pad",
                      internal_batch_size: int = 256, device=None, keep_bos: bool = True,
                      keep_last: int = 3, values: list[list[float]] | None = None) -> list[Attribution]:
    """Integrated gradients of the constrained target log-probability for a batch of prompts.

    ``seqs``: token ids of each prompt (ending with the task words, as prediction scores them);
    ``targets``: per prompt the index into ``label_ids`` to explain, or ``None`` (= the argmax).
    The baseline keeps ``[BOS]`` (``keep_bos``) and the last ``keep_last`` tokens (the task words) of
    every prompt and replaces every other token by the ``baseline`` embedding. ``values``: what each word
    carries (:mod:`.numeric`), for a model that reads them: a word's attribution then covers its value too
    (the baseline carries none).
    Every prompt gets ``n_steps`` quadrature points; ``internal_batch_size`` bounds the rows (prompt x
    point) of one forward + backward pass, so several prompts share a pass when it allows. Prompts are
    grouped by length (less padding) and right-padded (no attention mask needed, see ``_target_fn``).
    """
    if not seqs:
        return []
    device = device if device is not None else next(lm.parameters()).device
    alphas, weights = _quadrature(int(n_steps), method)
    emb_layer = _embedding_layer(lm)
    base_vec = _baseline_vector(lm, tokenizer, baseline)
    lab = torch.as_tensor(label_ids, device=device)
    per_pass = max(1, int(internal_batch_size) // len(alphas))  # prompts per pass
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
    results: list[Attribution | None] = [None] * len(seqs)
    with _inference_only(lm):
        dtype = next(lm.parameters()).dtype
        for c0 in range(0, len(order), per_pass):
            chunk = order[c0:c0 + per_pass]
            batch = _batch(lm, seqs, values, chunk, tokenizer.pad_id, device)
            x, b = _input_and_baseline(lm, emb_layer, batch, base_vec, tokenizer.bos_id, keep_bos, keep_last)
            logp_x, tg, f_x, f_b = _endpoint_scores(lm, batch, x, b, dtype, lab, targets, chunk)
            attr = _path_integral(lm, batch, x, b, dtype, lab, tg, alphas, weights, internal_batch_size)
            probs = torch.exp(logp_x)
            for r, i in enumerate(chunk):
                results[i] = Attribution(
                    scores=attr[r, :len(seqs[i])].detach().cpu().numpy().astype(np.float64),
                    probabilities=probs[r].cpu().numpy().astype(np.float64),
                    target=int(tg[r]), f_input=float(f_x[r]), f_baseline=float(f_b[r]),
                )
    return results  # type: ignore[return-value]


@contextmanager
def _inference_only(lm):
    """``lm`` in eval mode with its parameters frozen (only the input embeddings need gradients),
    restored afterwards, also on error."""
    was_training = lm.training
    lm.eval()
    req = [p.requires_grad for p in lm.parameters()]
    for p in lm.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, q in zip(lm.parameters(), req):
            p.requires_grad_(q)
        lm.train(was_training)


class _Batch(NamedTuple):
    """A chunk of prompts right-padded into one batch (see ``_target_fn``); tensors on ``device`` except
    ``lens``, ``cols`` and ``vals``."""
    device: object
    ids: torch.Tensor  # (B, n) token ids, [PAD] after each prompt
    vals: torch.Tensor | None  # (B, n) the values the words carry (a model that reads them)
    lens: torch.Tensor  # (B,) prompt lengths
    cols: torch.Tensor  # (n,) positions
    real: torch.Tensor  # (B, n) bool: inside the prompt
    pos: torch.Tensor  # (B, n) position ids
    keep: torch.Tensor  # the distinct last positions (``logits_to_keep``)
    row_pos: torch.Tensor  # each row's index into keep
    attn: torch.Tensor | None = None  # (B, 1, n, n): prefix attention's mask, None for causal models


def _batch(lm, seqs, values, chunk, pad_id: int, device) -> _Batch:
    """Prompts ``chunk`` of ``seqs`` (and their ``values``) as one right-padded batch on ``device``,
    numbered as ``lm`` numbers its training batches (:mod:`.positions`)."""
    lens = torch.as_tensor([len(seqs[i]) for i in chunk])
    n = int(lens.max())
    B = len(chunk)
    ids = torch.full((B, n), pad_id, dtype=torch.long)
    vals = torch.zeros((B, n), dtype=torch.float32) if values is not None else None
    for r, i in enumerate(chunk):
        ids[r, :len(seqs[i])] = torch.as_tensor(seqs[i])
        if vals is not None:
            vals[r, :len(seqs[i])] = torch.as_tensor(values[i], dtype=torch.float32)
    cols = torch.arange(n)
    real = cols[None, :] < lens[:, None]
    by_line = training_positions(lm, ids)  # None: one position per token
    pos = (cols.expand(B, n) if by_line is None else by_line).to(device)
    keep, row_pos = torch.unique(lens - 1, return_inverse=True)
    attn = attention_mask(lm, ids, None)  # None for a causal model (no padding mask given)
    attn = attn.to(device) if attn is not None else None
    return _Batch(device, ids.to(device), vals, lens, cols, real.to(device), pos, keep.to(device),
                  row_pos.to(device), attn)


def _input_and_baseline(lm, emb_layer, batch: _Batch, base_vec, bos_id: int, keep_bos: bool, keep_last: int):
    """The prompts' input embeddings ``x`` and their baseline ``b`` (float32): ``base_vec`` at every
    content token; padding, ``[BOS]`` (``keep_bos``) and the last ``keep_last`` tokens as in ``x``."""
    ids, real = batch.ids, batch.real
    with torch.no_grad():
        x = (embed_inputs(lm, ids, batch.vals) if batch.vals is not None else emb_layer(ids)).float()
        b = base_vec.float().expand_as(x).clone()
        same = ~real  # padding is identical in input and baseline
        if keep_bos:
            same |= ids == bos_id
        if keep_last:
            last = batch.cols[None, :].to(batch.device) >= (batch.lens[:, None].to(batch.device) - keep_last)
            same |= real & last
        b[same] = x[same]
    return x, b


def _endpoint_scores(lm, batch: _Batch, x, b, dtype, lab, targets, chunk):
    """At the input: the label log-probabilities (also the probabilities and the default target), the
    target of each prompt and its f; at the baseline: f. ``targets``: as for ``attribute_prompts``."""
    device = batch.device
    with torch.no_grad():
        zero = torch.zeros(len(chunk), dtype=torch.long, device=device)
        _, logp_x = _target_fn(lm, x.to(dtype), batch.pos, batch.keep, batch.row_pos, lab, zero, batch.attn)
        if targets is None:
            tg = logp_x.argmax(1)
        else:
            tg = torch.as_tensor([
                int(logp_x[r].argmax()) if targets[i] is None else int(targets[i])
                for r, i in enumerate(chunk)], device=device)
        f_x = logp_x.gather(1, tg[:, None])[:, 0]
        f_b, _ = _target_fn(lm, b.to(dtype), batch.pos, batch.keep, batch.row_pos, lab, tg, batch.attn)
    return logp_x, tg, f_x, f_b


def _path_integral(lm, batch: _Batch, x, b, dtype, lab, tg, alphas, weights, internal_batch_size: int):
    """Each token's attribution (B, n): ``(x - b)`` times the quadrature of the gradients of f along the
    straight path from ``b`` to ``x``, summed over the embedding dimensions."""
    device = batch.device
    diff = x - b
    grads = torch.zeros_like(x)
    # rows = (prompt, step) pairs, in passes of at most internal_batch_size rows
    ri_all = torch.arange(x.shape[0], device=device).repeat_interleave(len(alphas))
    ai_all = torch.as_tensor(alphas, dtype=x.dtype, device=device).repeat(x.shape[0])
    wi_all = torch.as_tensor(weights, dtype=x.dtype, device=device).repeat(x.shape[0])
    rows_per_pass = max(1, int(internal_batch_size))
    for s0 in range(0, len(ri_all), rows_per_pass):
        ri = ri_all[s0:s0 + rows_per_pass]
        a = ai_all[s0:s0 + rows_per_pass][:, None, None]
        w = wi_all[s0:s0 + rows_per_pass][:, None, None]
        e = (b[ri] + a * diff[ri]).to(dtype).requires_grad_(True)
        with torch.enable_grad():
            f, _ = _target_fn(lm, e, batch.pos[ri], batch.keep, batch.row_pos[ri], lab, tg[ri],
                              None if batch.attn is None else batch.attn[ri])
            (g,) = torch.autograd.grad(f.sum(), e)
        grads.index_add_(0, ri, g.float() * w)
    return (diff * grads).sum(-1)


# ------------------------------------------------------------------------------------- cell level
def _labels(model, task: str) -> list[str]:
    if task == "type":
        return list(model.type_labels)
    if task == "status":
        return list(model.status_labels)
    raise ModelInputError("task", f"unknown task {task!r} (type or status)")


def _target_index(target, labels: list[str], task: str):
    if target is None:
        return None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not 0 <= int(target) < len(labels):
            raise ModelInputError("target", f"class index {target} out of range (0..{len(labels) - 1})")
        return int(target)
    t = str(target).strip()
    for cand in (t, t.replace("_", " ")):
        if cand in labels:
            return labels.index(cand)
    low = {lab.lower(): j for j, lab in enumerate(labels)}
    if t.lower() in low:
        return low[t.lower()]
    raise ModelInputError("target", f"unknown {task} class {target!r} (classes: {', '.join(labels)})")


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def explanation_dict(model, prompt: dict, att: Attribution, labels: list[str], baseline: str, n_steps: int,
                     method: str) -> dict:
    """The per-cell explanation (module doc) from a ``prompts_for`` entry and its attribution."""
    words = model.tokenizer.decode(prompt["tokens"]).split(" ")
    words = prompt["text"].split(" ") if len(prompt["text"].split(" ")) == len(att.scores) else words
    parts = prompt_parts(words, prompt["partners"])
    scores = [float(s) for s in att.scores]
    known = set(model.markers)
    # a levels sentence's word CD3:7 is the marker CD3 (at level 7): its attribution is that marker's
    markers = [{"marker": word_marker(w), "word": w, "score": s} for w, s, p in zip(words, scores, parts)
               if p == "anchor" and word_marker(w) in known]
    markers.sort(key=lambda d: -d["score"])
    partners = []
    for p in prompt["partners"]:
        name = f"partner:{p['Object']}"
        partners.append({
            "object": _py(p["Object"]), "role": p["role"], "distance_um": float(p["distance_um"]),
            "direction": p["direction"],
            "score": float(sum(s for s, q in zip(scores, parts) if q == name)),
        })
    around = [s for s, q in zip(scores, parts) if q == "around"]
    probs = {lab: float(v) for lab, v in zip(labels, att.probabilities)}
    return {
        "object": _py(prompt["Object"]),
        "image": prompt.get("image"),
        "task": prompt.get("task", "type"),
        "predicted": labels[int(np.argmax(att.probabilities))],
        "target": labels[att.target],
        "probabilities": probs,
        "tokens": [{"token": w, "score": s, "part": p} for w, s, p in zip(words, scores, parts)],
        "markers": markers,
        "partners": partners,
        # the v2 "around" line (mean of the nearest cells) as one score, None where the prompt has none
        "around_score": float(sum(around)) if around else None,
        "baseline": f"{baseline} embedding at every content token ([BOS] and task words kept)",
        "n_steps": int(n_steps),
        "method": method,
        "f_input": att.f_input,
        "f_baseline": att.f_baseline,
        "completeness_error": att.completeness_error,
    }


def within_tolerance(error: float, f_input: float, f_baseline: float, tolerance: float = 0.05) -> bool:
    """Completeness holds: the attributions sum to ``f_input - f_baseline`` within ``tolerance`` of it
    (of 0.1 when the difference is smaller)."""
    return error <= tolerance * max(abs(f_input - f_baseline), 0.1)


def is_complete(explanation: dict, tolerance: float = 0.05) -> bool:
    """Whether one cell's explanation (a dict of :func:`explain_cells`) meets the refinement's rule."""
    return within_tolerance(explanation["completeness_error"], explanation["f_input"], explanation["f_baseline"],
                            tolerance)


def _complete(att: Attribution, tolerance: float) -> bool:
    return within_tolerance(att.completeness_error, att.f_input, att.f_baseline, tolerance)


def explain_prompts(model, prompts: list[dict], target=None, n_steps: int = 16, method: str = "gausslegendre",
                    baseline: str = "pad", internal_batch_size: int = 256, progress=None,
                    chunk_cells: int = 64, tolerance: float | None = 0.05, max_steps: int = 256) -> list[dict]:
    """Explanations of ``prompts`` (entries of :meth:`S2SModel.prompts_for`, one task for all).
    ``target``: None (predicted class), a class name / index for all cells, or a list (one per prompt).
    ``progress(done, total)`` is called after each chunk of ``chunk_cells`` cells; returning False stops
    (the explanations done so far are returned).

    Adaptive steps: a cell whose completeness error exceeds ``tolerance`` x max(|f(x) - f(b)|, 0.1) is
    attributed again with twice the steps, until it passes or ``max_steps`` is reached (``None``: no
    refinement). Each explanation reports the steps it used (``n_steps``)."""
    if not prompts:
        return []
    task = prompts[0].get("task", "type")
    labels = _labels(model, task)
    label_ids = model.label_ids(task)
    if isinstance(target, (list, tuple, np.ndarray)):
        if len(target) != len(prompts):
            raise ModelInputError("target", f"{len(target)} targets for {len(prompts)} cells")
        tg = [_target_index(t, labels, task) for t in target]
    else:
        tg = [_target_index(target, labels, task)] * len(prompts)
    out: list[dict] = []
    for c0 in range(0, len(prompts), chunk_cells):
        sel = prompts[c0:c0 + chunk_cells]
        tsel = tg[c0:c0 + chunk_cells]
        steps = int(n_steps)
        vals = [p.get("values") or [0.0] * len(p["tokens"]) for p in sel] if model.sentence.values else None
        atts = attribute_prompts(model.lm, model.tokenizer, [p["tokens"] for p in sel], label_ids, tsel,
                                 n_steps=steps, method=method, baseline=baseline,
                                 internal_batch_size=internal_batch_size, device=model.device, values=vals)
        used = [steps] * len(sel)
        while tolerance is not None and steps * 2 <= max_steps:
            redo = [i for i, a in enumerate(atts) if not _complete(a, tolerance)]
            if not redo:
                break
            steps *= 2
            again = attribute_prompts(model.lm, model.tokenizer, [sel[i]["tokens"] for i in redo], label_ids,
                                      [atts[i].target for i in redo], n_steps=steps, method=method,
                                      baseline=baseline, internal_batch_size=internal_batch_size,
                                      device=model.device, values=[vals[i] for i in redo] if vals else None)
            for i, a in zip(redo, again):
                atts[i], used[i] = a, steps
        out += [explanation_dict(model, p, a, labels, baseline, k, method) for p, a, k in zip(sel, atts, used)]
        if progress is not None and progress(len(out), len(prompts)) is False:
            break
    return out


def explain_cells(model, cells, object_ids=None, target=None, task: str = "type", markers=None,
                  n_steps: int = 16, method: str = "gausslegendre", baseline: str = "pad",
                  internal_batch_size: int = 256, progress=None, tolerance: float | None = 0.05,
                  max_steps: int = 256) -> list[dict]:
    """Explain the prediction of each chosen cell (``object_ids``: ``Object`` values; default all cells).

    ``cells``: a cells table (as for :meth:`S2SModel.predict_cells`) or a prepared
    :class:`~spatial2sentence.cellset.CellSet` (reuse it to explain many cells of one image: partners
    are built once). ``target``: None (the predicted class), a class name, or one per cell. Returns one
    dict per cell (see the module doc), in the table's order.
    """
    if method not in METHODS:
        raise ModelInputError("method", f"unknown method {method!r} ({', '.join(METHODS)})")
    if baseline not in BASELINES:
        raise ModelInputError("baseline", f"unknown baseline {baseline!r} ({', '.join(BASELINES)})")
    if int(n_steps) < 1:
        raise ModelInputError("n_steps", f"must be >= 1 (got {n_steps})")
    _labels(model, task)
    cs = model.prepare(cells, markers)
    if task == "type" and cs.is_phenotype.any():
        raise ModelInputError("cells", "cells known only by their phenotype have no cell-type prediction to explain")
    prompts = model.prompts_for(cs, object_ids, task=task)
    return explain_prompts(model, prompts, target=target, n_steps=n_steps, method=method, baseline=baseline,
                           internal_batch_size=internal_batch_size, progress=progress, tolerance=tolerance,
                           max_steps=max_steps)


def explain_image(model, image, mask, object_ids=None, panel=None, target=None, task: str = "type",
                  n_steps: int = 16, method: str = "gausslegendre", baseline: str = "pad",
                  internal_batch_size: int = 256, progress=None, tolerance: float | None = 0.05,
                  max_steps: int = 256) -> list[dict]:
    """Measure an image (:class:`~spatial2sentence.io.IMCImage` or path) with its mask (array or path)
    and explain the chosen cells (default: all), through the same path as ``s2s predict``."""
    image, df = measure_image(image, mask, panel)
    cs = model.prepare(df, image.channels, image.name, source=image.name)
    return explain_cells(model, cs, object_ids, target=target, task=task, n_steps=n_steps, method=method,
                         baseline=baseline, internal_batch_size=internal_batch_size, progress=progress,
                         tolerance=tolerance, max_steps=max_steps)
