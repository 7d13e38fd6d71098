"""Numbers carried into the embeddings: a marker word's embedding shifted by its measured value.

Why: a cell sentence names markers (and, with level words, one of a few coarse levels); a linear model
on the continuous marker vector still read more from a cell than any word encoding we measured
(``benchmarks/sentence_encoding.py``). Numeric-aware language models keep a number beside its word. Here
every marker word of a prompt carries the cell's value of that marker (the 0-1 range scale of
:meth:`~spatial2sentence.cellset.CellSet.range_values`, clipped to ``[0, VALUE_MAX]``) and its input
embedding becomes ``E[word] + value * V[word]``, with ``V`` one learned vector per word. Every other
word (template, distances, labels) carries 0, so its embedding is unchanged. The prompt stays text: the
words are the same, and the value of each word is shown beside it in explanations.

``V`` is a submodule of the language model (``lm.s2s_value_embedding``), so it trains, moves between
devices and is saved in ``model.safetensors`` with the rest; :func:`load_value_embedding` reads it back
after ``from_pretrained`` (which does not know the extra weight).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

VALUE_KEY = "s2s_value_embedding.weight"
VALUE_MAX = 1.5  # values above the 99th training percentile (1.0) are kept up to this, then clipped


def attach_value_embedding(lm, seed: int = 0, std: float = 0.02) -> None:
    """Give ``lm`` a fresh value embedding (random vectors of standard deviation ``std``, one per word of
    its vocabulary)."""
    emb = lm.get_input_embeddings()
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    table = torch.nn.Embedding(emb.num_embeddings, emb.embedding_dim)
    with torch.no_grad():
        table.weight.copy_(torch.randn(table.weight.shape, generator=gen) * std)
    lm.s2s_value_embedding = table.to(device=emb.weight.device, dtype=emb.weight.dtype)


def has_values(lm) -> bool:
    return getattr(lm, "s2s_value_embedding", None) is not None


def load_value_embedding(lm, path: str | Path) -> None:
    """Read ``V`` from a saved model's ``model.safetensors`` into ``lm`` (which must have one attached)."""
    with safe_open(str(Path(path) / "model.safetensors"), framework="pt") as f:
        if VALUE_KEY not in f.keys():
            raise KeyError(f"model.safetensors has no {VALUE_KEY} (the model's sentences carry values)")
        weight = f.get_tensor(VALUE_KEY)
    table = lm.s2s_value_embedding
    if tuple(weight.shape) != tuple(table.weight.shape):
        raise ValueError(f"{VALUE_KEY} has shape {tuple(weight.shape)}, expected {tuple(table.weight.shape)}")
    with __import__("torch").no_grad():
        table.weight.copy_(weight.to(table.weight.dtype))


def embed_inputs(lm, ids, values=None):
    """Input embeddings of token ``ids`` (n x t): ``E[ids] + values * V[ids]`` when ``lm`` carries a value
    embedding and ``values`` (n x t floats) are given, else ``E[ids]``."""
    h = lm.get_input_embeddings()(ids)
    if values is None or not has_values(lm):
        return h
    return h + values.to(device=h.device, dtype=h.dtype)[..., None] * lm.s2s_value_embedding(ids)
