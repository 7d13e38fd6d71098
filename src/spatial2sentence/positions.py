"""Position ids of prompts: one per token (v1) or one per line (v2, ``ModelSettings.positions``).

A prompt is lines separated by ``;`` (the anchor's sentence, its partners, the ``around`` line, then the
task words). With ``"tokens"`` every word gets its own position (the usual causal LM). With ``"lines"``
every word of line k gets position k: the words of one sentence share a position, so rotary attention
tells the model which line a word belongs to (anchor, partner, neighbourhood, task) but not its rank in
the line. Why: the words of a sentence are already ordered by their values and carry those values
(:mod:`spatial2sentence.numeric`); a position per word let the model learn "marker X in the 3rd place",
which a held-out image shifts. On one CyCIF strip (``benchmarks/fold_probe.py``, strip 4, no validation
split, same budget; rows of ``benchmarks/results/fold_probe/probes.jsonl``, the line rows from this
numbering's prototype) held-out accuracy went from 62.9 to 69.9 (c2s) and 64.9 to 68.5 (s2s); a Llama
reading one cell without positions reached 71.5 against 68.3 with them
(``benchmarks/probes/llama_variants.py``). The benchmark (``s2s benchmark``) says where it stands.

``"lines_anchor_last"`` numbers the lines the same way but gives the anchor's line the number just
before the task line (the partner and ``around`` lines move up by one): the words of the cell being
asked about then sit at the same distance from the answer in every prompt, whatever its number of
partner lines, as they do in a single-cell prompt (rotary attention sees only distances). The text
itself keeps the anchor first.

The choice travels with the language model (``lm.s2s_line_sep``, set by
:class:`~spatial2sentence.model.S2SModel`), so training, prediction, the cached task words and
explanations all number the same prompt the same way.

Prefix attention (``ModelSettings.attention="prefix"``, :func:`attention_mask`): the lines before the task
line (the anchor, partners, ``around``; the prompt's sentences) attend to each other both ways, and the
task words and answer attend causally to everything before them, as in a prefix language model; the
answer is still generated left to right. Why: with causal attention a word early in a sentence never
sees the words after it, so after two layers the answer position reads partial summaries of the cell.
Probe (``benchmarks/probes/llama_variants.py``, a Llama reading one CyCIF cell, held-out strip, one
seed, 2,000 steps; ``benchmarks/probes/results.md``): strip 3 68.6 -> 76.0, strip 2 73.2 -> 80.4; the
causal model fitted its training cells to 0.995-0.999 against 0.95-0.96. In the benchmark (CyCIF, 3
seeds x 4 strips, ``benchmarks/results/cycif_v2/README.md``) c2s went from 76.3 to 79.7, but s2s stayed
at 75.4: its anchor's words then also read the partner and ``around`` lines. ``"sentence"`` attention
keeps each line's words seeing each other both ways and earlier lines causally, so the anchor's line
is read as a single-cell prompt reads it (for c2s the two modes are the same mask). Like the positions,
the choice travels with the language model (``lm.s2s_prefix_sep``, ``lm.s2s_prefix_mode``), so every
path builds the same mask.
"""

from __future__ import annotations

import torch

LINE_SEP_ATTR = "s2s_line_sep"
ANCHOR_LAST_ATTR = "s2s_anchor_last"
POSITIONS = ("tokens", "lines", "lines_anchor_last")
PREFIX_ATTR = "s2s_prefix_sep"
PREFIX_MODE_ATTR = "s2s_prefix_mode"
ATTENTION = ("causal", "prefix", "sentence")


def use_line_positions(lm, sep_id: int | None, anchor_last: bool = False) -> None:
    """Number ``lm``'s prompts by line, ``sep_id`` being the id of ``;`` (None: one position per token);
    ``anchor_last``: the anchor's line numbered just before the task line."""
    setattr(lm, LINE_SEP_ATTR, None if sep_id is None else int(sep_id))
    setattr(lm, ANCHOR_LAST_ATTR, bool(anchor_last) and sep_id is not None)


def line_sep(lm) -> int | None:
    return getattr(lm, LINE_SEP_ATTR, None)


def anchor_last(lm) -> bool:
    return getattr(lm, ANCHOR_LAST_ATTR, False)


def line_numbers(ids: torch.Tensor, sep_id: int, anchor_last: bool = False) -> torch.Tensor:
    """The line of every token of ``ids`` (n x t): the number of ``;`` (``sep_id``) before it, a ``;``
    belonging to the line it closes; padding, never a ``;``, takes its neighbours' number.
    ``anchor_last``: line 0 (the anchor) becomes S - 1 and lines 1 .. S - 1 become 0 .. S - 2, S being the
    row's number of ``;`` (the task line, S, keeps its number)."""
    s = (ids == sep_id).long()
    line = s.cumsum(1) - s
    if not anchor_last:
        return line
    total = s.sum(1, keepdim=True)
    moved = torch.where(line == 0, total - 1, torch.where(line < total, line - 1, line))
    return moved.clamp(min=0)


def prompt_positions(lm, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position ids of padded prompts ``ids`` (n x t, ``mask`` 1 on real tokens, padding left or right):
    per token, counting real tokens only; or per line (the ``;`` before a token, a ``;`` belonging to the
    line it closes)."""
    sep = line_sep(lm)
    if sep is None:
        return (mask.cumsum(1) - 1).clamp(min=0)
    return line_numbers(ids, sep, anchor_last(lm))


def training_positions(lm, ids: torch.Tensor) -> torch.Tensor | None:
    """Position ids for a right-padded batch (training, explanations): None (the model's own 0..t-1)
    per token."""
    sep = line_sep(lm)
    return None if sep is None else line_numbers(ids, sep, anchor_last(lm))


def task_positions(lm, ids: torch.Tensor, pos: torch.Tensor, steps: int) -> torch.Tensor:
    """Position ids of ``steps`` task words run on top of left-padded contexts ``ids`` (positions ``pos``):
    the next positions per token; per line, the line after the context's last ``;``."""
    sep = line_sep(lm)
    if sep is None:
        return pos[:, -1:] + 1 + torch.arange(steps, device=pos.device)
    return (ids == sep).long().sum(1, keepdim=True).expand(-1, steps)


def use_prefix_attention(lm, sep_id: int | None, mode: str = "prefix") -> None:
    """Let ``lm``'s prompt lines before the task line attend both ways (``sep_id``: the id of ``;``):
    ``mode`` "prefix" across all of them, "sentence" within each line only (earlier lines are seen
    causally); "causal" or ``sep_id`` None: causal attention (every stored model before these modes)."""
    if mode not in ATTENTION:
        raise ValueError(f"unknown attention {mode!r} ({', '.join(ATTENTION)})")
    setattr(lm, PREFIX_ATTR, None if sep_id is None or mode == "causal" else int(sep_id))
    setattr(lm, PREFIX_MODE_ATTR, mode)


def prefix_sep(lm) -> int | None:
    return getattr(lm, PREFIX_ATTR, None)


def attention_mask(lm, ids: torch.Tensor, mask: torch.Tensor | None, dtype=None) -> torch.Tensor | None:
    """The attention mask to give ``lm`` for the padded prompts ``ids`` (n x t; ``mask`` 1 on real
    tokens, None: all real) run from their start: ``mask`` itself for a causal model; for a model with
    prefix attention a 4D additive mask (n x 1 x t x t, 0 where allowed, the dtype's minimum elsewhere):
    query i sees key j when j is a real token and j <= i, or both are in the prefix (a line before the
    row's last ``;``: the prompt's sentences; a context without task words is all prefix) and, for
    "sentence" attention, in the same line. Every position also sees itself, so padding rows stay finite
    (no real position reads them). Task words run on top of a cached context (:func:`~spatial2sentence.
    predict.score_tasks`) are causal and take the plain 2D mask."""
    sep = prefix_sep(lm)
    if sep is None:
        return mask
    n, t = ids.shape
    valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    line = line_numbers(ids, sep)
    last = (ids == sep).long().sum(1, keepdim=True)
    pre = line < last  # tokens of the lines the row's last ";" closes
    idx = torch.arange(t, device=ids.device)
    both = pre[:, :, None] & pre[:, None, :]
    if getattr(lm, PREFIX_MODE_ATTR, "prefix") == "sentence":
        both &= line[:, :, None] == line[:, None, :]
    allowed = (idx[None, :] <= idx[:, None])[None] | both
    allowed = (allowed & valid[:, None, :]) | torch.eye(t, dtype=torch.bool, device=ids.device)[None]
    dtype = dtype or torch.float32
    return torch.zeros((n, 1, t, t), dtype=dtype, device=ids.device).masked_fill(
        ~allowed[:, None], torch.finfo(dtype).min)
