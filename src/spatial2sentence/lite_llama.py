"""Our Llama models for inference in plain torch: a saved model directory read without transformers.

Why: importing ``transformers`` took 2.9 s of the 4.7 s between opening the widget and the first
annotated image when Run is pressed at once (``benchmarks/cold_start.py``), and ``s2s predict`` paid it on
every call. Inference needs only Llama's forward pass, so a model directory whose ``config.json`` is a
plain Llama (the architecture every model we train has; :func:`supports`) is read into
:class:`LiteLlamaForCausalLM`; anything else (GPT-2, a base model with rotary scaling or biases) goes
through transformers as before, and training always uses transformers.

The arithmetic is transformers' Llama (5.x): RMSNorm in float32, the "default" rotary embedding with the
rotate-half convention, scaled dot-product attention, SiLU-gated MLP, tied or untied output layer. The
call signature is the part of transformers' ``LlamaForCausalLM.forward`` that prediction and explanations
use (``input_ids`` or ``inputs_embeds``, ``attention_mask``, ``position_ids``, ``logits_to_keep``,
``use_cache`` / ``cache``), so the rest of the library does not know which it holds.
``tests/test_lite_llama.py`` checks logits, cached task words, value embeddings, gradients (explanations)
and saving against transformers on the same weights.

Positions that no logit is asked for are not computed in the last layer (its keys and values are, for
the cache): the shortcut that ``spatial2sentence.predict`` takes for transformers' Llama.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

_DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": True, "num_key_value_heads": None, "head_dim": None}


def supports(cfg: dict) -> bool:
    """Whether a ``config.json`` describes a Llama this module computes exactly as transformers does."""
    rope = cfg.get("rope_parameters") or {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10000.0)}
    return (cfg.get("model_type") == "llama" and cfg.get("architectures", ["LlamaForCausalLM"]) == ["LlamaForCausalLM"]
            and not cfg.get("attention_bias", False) and not cfg.get("mlp_bias", False)
            and cfg.get("hidden_act", "silu") == "silu" and cfg.get("pretraining_tp", 1) == 1
            and rope.get("rope_type", "default") == "default" and cfg.get("rope_scaling") is None)


class _RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, h):
        x = h.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(h.dtype)


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


class _Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c.hidden_size, bias=False)

    def _split(self, rows, n):  # (B, t, n * d) -> (B, n, t, d)
        return rows.view(rows.shape[0], rows.shape[1], n, self.head_dim).transpose(1, 2)

    def forward(self, x, xq, cos, sin, qcos, qsin, allowed, past):
        """``x``: normed inputs of every new position; ``xq``: those whose outputs are wanted (with their
        rotary ``qcos``/``qsin``); ``allowed``: (B, tq, past + t) bool; ``past``: cached (k, v) or None."""
        k = _rotate(self._split(self.k_proj(x), self.kv_heads), cos, sin)
        v = self._split(self.v_proj(x), self.kv_heads)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        q = _rotate(self._split(self.q_proj(xq), self.heads), qcos, qsin)
        groups = self.heads // self.kv_heads
        kk, vv = (k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)) if groups > 1 else (k, v)
        o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=allowed[:, None], scale=self.head_dim ** -0.5)
        return self.o_proj(o.transpose(1, 2).reshape(xq.shape[0], xq.shape[1], -1)), (k, v)


class _MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = _Attention(c)
        self.post_attention_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = _MLP(c)

    def forward(self, h, keep, cos, sin, allowed, past):
        """New residual stream at positions ``keep`` (index tensor, or None: all) and this layer's (k, v)."""
        x = self.input_layernorm(h)
        if keep is None:
            a, kv = self.self_attn(x, x, cos, sin, cos, sin, allowed, past)
            h = h + a
        else:
            a, kv = self.self_attn(x, x[:, keep], cos, sin, cos[:, :, keep], sin[:, :, keep], allowed[:, keep], past)
            h = h[:, keep] + a
        return h + self.mlp(self.post_attention_layernorm(h)), kv


class _Body(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))
        self.norm = _RMSNorm(c.hidden_size, c.rms_norm_eps)


class Cache:
    """Keys and values of every layer over the positions run so far (transformers' DynamicCache subset)."""

    def __init__(self, n_layers: int):
        self.kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    def get_seq_length(self) -> int:
        return 0 if self.kv[0] is None else int(self.kv[0][0].shape[2])

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` positions (negative: drop that many from the end)."""
        n = self.get_seq_length()
        keep = n + max_length if max_length < 0 else min(max_length, n)
        self.kv = [None if e is None else (e[0][:, :, :keep], e[1][:, :, :keep]) for e in self.kv]


class LiteLlamaForCausalLM(nn.Module):
    """A Llama causal LM (inference) with transformers' parameter names, so its weights load and save
    in transformers' format."""

    def __init__(self, cfg: dict):
        super().__init__()
        c = {**_DEFAULTS, **cfg}
        c["num_key_value_heads"] = c["num_key_value_heads"] or c["num_attention_heads"]
        c["head_dim"] = c["head_dim"] or c["hidden_size"] // c["num_attention_heads"]
        self.raw_config = dict(cfg)
        self.config = SimpleNamespace(**c)
        self.model = _Body(self.config)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        if c["tie_word_embeddings"]:
            self.lm_head.weight = self.model.embed_tokens.weight
        rope = c.get("rope_parameters") or {"rope_theta": c.get("rope_theta", 10000.0)}
        d = c["head_dim"]
        self.register_buffer("inv_freq", 1.0 / (float(rope["rope_theta"]) ** (torch.arange(0, d, 2, dtype=torch.float) / d)),
                             persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def _rotary(self, position_ids, dtype):
        freqs = position_ids[..., None].float() * self.inv_freq.to(position_ids.device)
        emb = torch.cat((freqs, freqs), -1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # (B, 1, t, d)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                logits_to_keep=0, use_cache=False, cache=None, **_ignored):
        h = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = h.shape[:2]
        past = 0 if cache is None else cache.get_seq_length()
        dev = h.device
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=dev).expand(B, T)
        cos, sin = self._rotary(position_ids, h.dtype)
        q_idx, k_idx = torch.arange(past, past + T, device=dev), torch.arange(past + T, device=dev)
        if attention_mask is not None and attention_mask.dim() == 4:  # an additive (B, 1, T, T) mask as given
            allowed = attention_mask[:, 0].to(dev) == 0  # (prefix attention: spatial2sentence.positions)
        else:
            allowed = (k_idx[None, :] <= q_idx[:, None])[None].expand(B, T, past + T)
        if attention_mask is not None and attention_mask.dim() == 2:
            allowed = allowed & attention_mask.to(dev).bool()[:, None, :]
        # a padding position sees nothing; letting it see itself keeps its (unread) outputs finite, and
        # no real position ever attends to it
        allowed = allowed | (k_idx[None, :] == q_idx[:, None])[None]
        if isinstance(logits_to_keep, int):
            keep = None if logits_to_keep == 0 else torch.arange(max(T - logits_to_keep, 0), T, device=dev)
        else:
            keep = logits_to_keep.to(dev)
        if use_cache and cache is None:
            cache = Cache(len(self.model.layers))
        last = len(self.model.layers) - 1
        for i, layer in enumerate(self.model.layers):
            past_kv = cache.kv[i] if cache is not None and past else None
            h, kv = layer(h, keep if i == last else None, cos, sin, allowed, past_kv)
            if use_cache:
                cache.kv[i] = kv
        logits = self.lm_head(self.model.norm(h))
        return SimpleNamespace(logits=logits, cache=cache if use_cache else None)

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "LiteLlamaForCausalLM":
        """The language model of a model directory (``config.json`` + ``model.safetensors``); raises
        ValueError naming what does not fit."""
        path = Path(path)
        cfg = json.loads((path / "config.json").read_text())
        if not supports(cfg):
            raise ValueError("config.json is not a plain Llama")
        lm = cls(cfg)
        state = load_file(str(path / "model.safetensors"))
        own = lm.state_dict()
        wanted = {k for k in own if not (k == "lm_head.weight" and lm.config.tie_word_embeddings)}
        missing = sorted(wanted - set(state))
        if missing:
            raise ValueError(f"model.safetensors lacks {', '.join(missing[:3])}")
        for k in wanted:
            if tuple(state[k].shape) != tuple(own[k].shape):
                raise ValueError(f"{k} has shape {tuple(state[k].shape)}, config.json says {tuple(own[k].shape)}")
        lm.load_state_dict({k: state[k] for k in wanted}, strict=False)
        return lm.to(dtype).eval()

    def save_pretrained(self, path: str | Path, safe_serialization: bool = True, **_ignored) -> None:
        """``config.json`` and ``model.safetensors`` as transformers writes them (tied output layer left out)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()
                 if not (k == "lm_head.weight" and self.config.tie_word_embeddings)}
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        cfg = {**self.raw_config, "dtype": str(self.dtype).removeprefix("torch.")}
        (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
