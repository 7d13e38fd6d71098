"""The Spatial2Sentence model: a small Hugging Face causal LM plus everything needed to write its prompts.

A model directory holds ``config.json`` + ``model.safetensors`` (the transformers model),
``tokenizer.json`` (word-level) and ``s2s_config.json`` (normalisation statistics, sentence, pair and
prompt settings, label sets, training panel, training summary) and ``MODEL_CARD.md``.

Programmatic API (used by the CLI, the napari plugin and the batch runner)::

    from spatial2sentence.model import S2SModel
    model = S2SModel.from_pretrained(None)              # None: the embedded default model
    preds = model.predict_cells(cells_df, progress=cb)  # cb(done, total) -> False cancels
    preds.cells                                         # per cell: cell_type, probabilities, status
    preds.image_status                                  # per image: clinical status + probabilities
    model.prompts_for(cells_df, [12, 40])               # prompt text, token ids, partners

One image with its mask: :func:`spatial2sentence.annotate.annotate_image`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

from .aliases import canonical_marker
from .anndata_io import predict_anndata
from .cellset import CellSet, marker_columns, prepare_cells
from .check_cells import panel_check
from .domain import DEFAULT_MIN_MARKER_FRACTION, PanelCoverage, PanelCoverageError, panel_coverage
from .errors import ModelInputError, S2SInputError, first_line
from .normalize import Normalizer
from .numeric import attach_value_embedding, load_value_embedding
from .positions import ATTENTION, POSITIONS, use_line_positions, use_prefix_attention
from .predict import PREDICT_BATCH_SIZE, Predictions, predict_cellset
from .prompts import PAIR_ANSWERS, direction_word, task_words
from .sentences import status_token, type_token
from .settings import ModelSettings, PairSettings, PromptSettings, SentenceSettings
from .threads import torch_rng_kept
from .tokenizer import WordTokenizer

# transformers is imported where a model is built (training) or loaded through it (architectures other
# than a plain Llama, spatial2sentence.lite_llama): importing it takes 2.9 s (python -X importtime), which
# `s2s --help`, input checks, model-folder checks and predictions with our Llama models skip
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "data" / "default_model"
S2S_CONFIG = "s2s_config.json"
FORMAT_VERSION = 1


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass


DEVICES = ("auto", "cpu", "cuda")


def check_device_name(device: str | None) -> str:
    """``device`` as ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or a clear error (no torch needed)."""
    device = "auto" if device is None else str(device).strip().lower()
    if device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    hint = " (for a GPU use cuda)" if device in ("gpu", "nvidia") else ""
    raise S2SInputError("--device", f"unknown device {device!r}{hint}; choose auto, cpu, cuda or cuda:N")


def resolve_device(device: str | None = "auto"):
    """The torch device for a device name; the one check used by the CLI, the plugin, batch runs and
    training. ``cuda`` where torch sees no CUDA device is refused with a message saying why."""
    device = check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "torch sees no CUDA device (driver or CUDA_VISIBLE_DEVICES)")
            raise S2SInputError("--device", f"CUDA was asked for but {why}; use --device cpu or auto")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise S2SInputError("--device", f"{device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device(device)


DTYPES = ("auto", "float32", "bfloat16")


def check_dtype(dtype: str | None) -> str:
    """``dtype`` as a name from :data:`DTYPES`, or a clear error (no torch needed)."""
    dtype = "auto" if dtype is None else str(dtype)
    if dtype not in DTYPES:
        raise S2SInputError("dtype", f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    return dtype


def resolve_dtype(dtype: str | None, device):
    """Weights' dtype: ``auto`` is bfloat16 on CUDA and float32 on CPU.

    Why float32 on CPU by default: a laptop CPU without native bf16 matrix units runs bf16 slower, and
    float32 gives the same probabilities on every CPU. ``bfloat16`` on a CPU with AMX / AVX512-BF16 runs
    the one-pass scoring about 1.5x faster with nearly the same answers (``benchmarks/inference.py``)."""
    dtype = check_dtype(dtype)
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, dtype)


def build_lm(ms: ModelSettings, vocab_size: int, tok: WordTokenizer, seed: int = 0):
    """A fresh small causal LM (Llama or GPT-2 architecture), or a local base model resized to our
    vocabulary when ``ms.base_model`` names a directory; its initial weights drawn from ``seed`` (torch's
    global generator is given its state back afterwards)."""
    with torch_rng_kept():
        return _build_lm(ms, vocab_size, tok, seed)


def _build_lm(ms: ModelSettings, vocab_size: int, tok: WordTokenizer, seed: int):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if ms.base_model:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if not Path(ms.base_model).is_dir():
            raise S2SInputError(ms.base_model, "base_model must be a local Hugging Face model directory")
        lm = AutoModelForCausalLM.from_pretrained(ms.base_model, local_files_only=True)
        lm.resize_token_embeddings(vocab_size)
        lm.config.pad_token_id, lm.config.bos_token_id, lm.config.eos_token_id = tok.pad_id, tok.bos_id, tok.eos_id
        return lm
    common = dict(vocab_size=vocab_size, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    if ms.architecture == "llama":
        cfg = LlamaConfig(
            hidden_size=ms.hidden_size, intermediate_size=ms.intermediate_size,
            num_hidden_layers=ms.num_layers, num_attention_heads=ms.num_heads,
            num_key_value_heads=ms.num_heads, max_position_embeddings=ms.max_positions,
            tie_word_embeddings=True, initializer_range=ms.init_std, **common,
        )
        return LlamaForCausalLM(cfg)
    if ms.architecture == "gpt2":
        cfg = GPT2Config(
            n_embd=ms.hidden_size, n_layer=ms.num_layers, n_head=ms.num_heads, n_inner=ms.intermediate_size,
            n_positions=ms.max_positions, initializer_range=ms.init_std, **common,
        )
        return GPT2LMHeadModel(cfg)
    raise S2SInputError("architecture", f"unknown architecture {ms.architecture!r} (llama or gpt2)")


def _load_lm(path: Path, dtype, backend: str):
    """The language model of a checked model directory: :mod:`.lite_llama` where it applies (see
    ``from_pretrained``), else transformers."""
    from . import lite_llama

    if backend == "auto" and lite_llama.supports(json.loads((path / "config.json").read_text())):
        return lite_llama.LiteLlamaForCausalLM.load(path, dtype)
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet_transformers()
    hf_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    return AutoModelForCausalLM.from_pretrained(str(path), config=hf_cfg, local_files_only=True, dtype=dtype)


MODEL_FILES = ("s2s_config.json", "config.json", "model.safetensors", "tokenizer.json")
TISSUE_READER = "tissue_reader"  # subfolder: the state that reads tissue prompts (S2SModel.tissue_lm)


def check_model_dir(path: str | Path) -> dict:
    """Check a model directory before loading it and return its ``s2s_config.json``.

    Every problem is one message "PATH: not a napari-s2s model: <what is wrong>" (or "model folder not
    found"): missing or unparseable files, a truncated weights file, empty label sets, labels the
    tokenizer lacks. Nothing in the folder is executed (safetensors weights only; ``auto_map`` and
    remote code are never used).
    """
    path = Path(path)

    def bad(problem: str):
        return ModelInputError(path, f"not a napari-s2s model: {problem}")

    if not path.exists():
        raise ModelInputError(path, "model folder not found")
    if not path.is_dir():
        raise ModelInputError(path, "a model is a folder (with s2s_config.json, model.safetensors, ...), "
                                    "this is a file")
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        extra = (" (pickled pytorch_model.bin weights are not read: they could run code)"
                 if "model.safetensors" in missing and (path / "pytorch_model.bin").exists() else "")
        raise bad(f"missing {', '.join(missing)}{extra}")
    docs = {}
    for name in ("s2s_config.json", "config.json", "tokenizer.json"):
        try:
            docs[name] = json.loads((path / name).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise bad(f"{name} is not valid JSON ({first_line(err)})") from None
        if not isinstance(docs[name], dict):
            raise bad(f"{name} does not hold a JSON object")
    meta = docs["s2s_config.json"]
    need = {"markers": list, "normalizer": dict, "type_labels": list, "status_labels": list,
            "sentence": dict, "pairs": dict, "prompt": dict, "model": dict}
    for key, kind in need.items():
        if not isinstance(meta.get(key), kind):
            raise bad(f"s2s_config.json has no {kind.__name__} '{key}'")
    if not meta["markers"] or not all(isinstance(m, str) and m for m in meta["markers"]):
        raise bad("s2s_config.json lists no markers")
    if not meta["type_labels"] or not all(isinstance(t, str) and t.strip() for t in meta["type_labels"]):
        raise bad("s2s_config.json has no type_labels (or an empty one)")
    if docs["config.json"].get("model_type") not in ("llama", "gpt2"):
        raise bad(f"config.json model_type {docs['config.json'].get('model_type')!r} is not llama or gpt2")
    vocab = (docs["tokenizer.json"].get("model") or {}).get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise bad("tokenizer.json holds no word-level vocabulary")
    labels = [type_token(t) for t in meta["type_labels"]] + [status_token(t) for t in meta["status_labels"]]
    lacking = [w for w in labels if w not in vocab]
    if lacking:
        raise bad(f"tokenizer.json lacks the label words {', '.join(lacking[:5])}")
    try:
        with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
            keys = list(fh.keys())
        size = (path / "model.safetensors").stat().st_size
        header = int.from_bytes((path / "model.safetensors").open("rb").read(8), "little")
        if not keys or header + 8 > size:
            raise ValueError("no tensors")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise bad(f"model.safetensors is unreadable or truncated ({first_line(err)})") from None
    reader = path / TISSUE_READER
    if reader.exists():
        lacking = [f for f in ("config.json", "model.safetensors") if not (reader / f).is_file()]
        if lacking:
            raise bad(f"{TISSUE_READER}/ lacks {', '.join(lacking)}")
        try:
            with safe_open(str(reader / "model.safetensors"), framework="pt") as fh:
                if not list(fh.keys()):
                    raise ValueError("no tensors")
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise bad(f"{TISSUE_READER}/model.safetensors is unreadable or truncated ({first_line(err)})") from None
    return meta


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


class S2SModel:
    def __init__(self, lm, tokenizer: WordTokenizer, markers: list[str], normalizer: Normalizer,
                 type_labels: list[str], status_labels: list[str], sentence: SentenceSettings,
                 pairs: PairSettings, prompt: PromptSettings, model: ModelSettings,
                 info: dict | None = None, device: str = "auto"):
        self.lm = lm
        # the state that read the validation tissues best, where training kept one apart from ``lm``
        # (:func:`spatial2sentence.training.tissue_reader_score`): it reads the images' tissue prompts
        self.tissue_lm = None
        self.tokenizer = tokenizer
        self.markers = list(markers)
        self.normalizer = normalizer
        self.type_labels = list(type_labels)
        self.status_labels = list(status_labels)
        self.sentence = sentence
        self.pair_settings = pairs
        self.prompt = prompt
        self.model_settings = model
        self.info = dict(info or {})
        self.path: Path | None = None  # the folder it was loaded from (from_pretrained)
        # temperatures per task fitted on held-out cells ("type_temperature"), with the fit's ECE
        self.calibration: dict = {}
        self.device = resolve_device(device)
        if model.positions not in POSITIONS:
            raise S2SInputError("model settings", f"unknown positions {model.positions!r} "
                                                  f"({', '.join(POSITIONS)})")
        if model.attention not in ATTENTION:
            raise S2SInputError("model settings", f"unknown attention {model.attention!r} ({', '.join(ATTENTION)})")
        if model.attention != "causal" and (model.architecture != "llama" or model.base_model):
            raise S2SInputError("model settings", f"{model.attention} attention is for the fresh Llama models we "
                                                  "train (architecture llama, no base_model)")
        self.number_prompts()
        self.lm.to(self.device)
        self.lm.eval()

    def number_prompts(self) -> None:
        """Give the language model this model's position numbering and attention (:mod:`.positions`);
        called again whenever ``lm`` or the tokenizer is replaced."""
        lines = self.model_settings.positions != "tokens"
        for lm in (self.lm, self.tissue_lm):
            if lm is not None:
                use_line_positions(lm, self.tokenizer.vocab[";"] if lines else None,
                                   anchor_last=self.model_settings.positions == "lines_anchor_last")
                use_prefix_attention(lm, self.tokenizer.vocab[";"], self.model_settings.attention)

    @property
    def status_lm(self):
        """The language model that reads the images' tissue prompts: :attr:`tissue_lm` where training kept
        one, else :attr:`lm`."""
        return self.tissue_lm if self.tissue_lm is not None else self.lm

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def create(cls, markers, type_labels, status_labels, normalizer, sentence=None, pairs=None,
               prompt=None, model=None, seed: int = 0, device: str = "cpu") -> "S2SModel":
        """A new untrained model for this panel and these label sets."""
        sentence, pairs = sentence or SentenceSettings(), pairs or PairSettings()
        prompt, model = prompt or PromptSettings(), model or ModelSettings()
        labels = [type_token(t) for t in type_labels] + [status_token(s) for s in status_labels]
        tok = WordTokenizer.build(markers, labels, prompt.distance_bins_um)
        lm = build_lm(model, len(tok), tok, seed)
        return cls(lm, tok, markers, normalizer, type_labels, status_labels, sentence, pairs, prompt,
                   model, device=device)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "auto",
                        dtype: str = "auto", backend: str = "auto") -> "S2SModel":
        """Load a model directory; ``None`` loads the embedded default model (Damond panel).
        ``dtype``: see :func:`resolve_dtype`. ``backend``: ``"auto"`` reads a plain Llama with
        :mod:`spatial2sentence.lite_llama` (no transformers import) and anything else with transformers;
        ``"transformers"`` always uses transformers."""
        path = DEFAULT_MODEL_DIR if path is None else Path(path)
        meta = check_model_dir(path)  # before transformers is imported: a bad folder is refused at once
        if backend not in ("auto", "transformers"):
            raise S2SInputError("backend", f"unknown backend {backend!r} (auto or transformers)")
        dev = resolve_device(device)
        dtype = resolve_dtype(dtype, dev)
        try:
            lm = _load_lm(path, dtype, backend)
            tok = WordTokenizer.load(path)
            ps = dict(meta["prompt"])
            ps["distance_bins_um"] = tuple(ps.get("distance_bins_um", PromptSettings().distance_bins_um))
            # models saved before rank_by existed ranked by z (top 8 above 0 was then the default); models
            # saved before positions existed number their prompts per token
            sentence = {"rank_by": "z", **meta["sentence"]}
            model = cls(
                lm, tok, meta["markers"], Normalizer.from_dict(meta["normalizer"]), meta["type_labels"],
                meta["status_labels"], SentenceSettings.from_dict(sentence),
                PairSettings.from_dict(meta["pairs"]), PromptSettings.from_dict(ps),
                ModelSettings.from_dict({"positions": "tokens", **meta["model"]}), meta.get("info", {}), device=str(dev),
            )
            if model.sentence.values:
                attach_value_embedding(lm)
                load_value_embedding(lm, path)
                model.lm.to(model.device)
            if (path / TISSUE_READER / "model.safetensors").is_file():
                reader = _load_lm(path / TISSUE_READER, dtype, backend)
                if model.sentence.values:
                    attach_value_embedding(reader)
                    load_value_embedding(reader, path / TISSUE_READER)
                model.tissue_lm = reader.to(model.device).eval()
                model.number_prompts()
            for task in ("type", "status"):
                model.label_ids(task)
            model.path = path
            if isinstance(meta.get("calibration"), dict):
                model.calibration = dict(meta["calibration"])
        except S2SInputError as err:
            raise ModelInputError(path, f"not a napari-s2s model: {err.problem}") from None
        except Exception as err:  # noqa: BLE001 - transformers/tokenizers raise many types for bad files
            raise ModelInputError(path, f"not a napari-s2s model: {type(err).__name__}: "
                                        f"{first_line(err)}") from None
        return model

    def config_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "markers": self.markers,
            "normalizer": self.normalizer.to_dict(),
            "type_labels": self.type_labels,
            "status_labels": self.status_labels,
            "sentence": self.sentence.to_dict(),
            "pairs": self.pair_settings.to_dict(),
            "prompt": {**self.prompt.to_dict(), "distance_bins_um": list(self.prompt.distance_bins_um)},
            "model": self.model_settings.to_dict(),
            "info": self.info,
            **({"calibration": self.calibration} if self.calibration else {}),
        }

    def save_pretrained(self, path: str | Path, card: str | None = None) -> Path:
        """Write the model directory (config.json, model.safetensors, tokenizer.json, s2s_config.json,
        MODEL_CARD.md)."""
        if type(self.lm).__module__.startswith("transformers"):
            _quiet_transformers()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lm = self.lm
        dtype = next(lm.parameters()).dtype
        # always written in float32; Module.float() converts in place, so the live model goes back after
        lm.float().save_pretrained(str(path), safe_serialization=True)
        lm.to(dtype)
        if self.tissue_lm is not None:  # a transformers folder of its own, read back by from_pretrained
            self.tissue_lm.float().save_pretrained(str(path / TISSUE_READER), safe_serialization=True)
            self.tissue_lm.to(dtype)
        self.tokenizer.save(path)
        (path / S2S_CONFIG).write_text(json.dumps(self.config_dict(), indent=1, default=float))
        if card is not None:
            (path / "MODEL_CARD.md").write_text(card)
        return path

    # --- labels ----------------------------------------------------------------------------------
    def label_ids(self, task: str) -> list[int]:
        if task == "type":
            return self.tokenizer.ids([type_token(t) for t in self.type_labels])
        if task == "status":
            return self.tokenizer.ids([status_token(s) for s in self.status_labels])
        if task == "pair":
            return self.tokenizer.ids(list(PAIR_ANSWERS))
        raise ValueError(task)

    # --- cells -> prompts ------------------------------------------------------------------------
    def prepare(self, cells: pd.DataFrame | CellSet, markers=None, image: str | None = None,
                source: str = "cells") -> CellSet:
        """Cells table -> :class:`CellSet` with partners (see :func:`~spatial2sentence.cellset.prepare_cells`)."""
        if isinstance(cells, CellSet):
            cs = cells
        else:
            cs = prepare_cells(cells, self.markers, self.normalizer, markers, image, source=source,
                               rescale_offset_z=self.sentence.rescale_offset_z)
        if cs.pairs is None:
            cs.build_pairs(self.pair_settings)
        return cs

    def prompts_for(self, cells: pd.DataFrame | CellSet, object_ids=None, task: str = "type",
                    markers=None) -> list[dict]:
        """The prompt of each chosen cell (``object_ids``: values of the ``Object`` column; default all):
        dicts with ``Object``, ``image``, ``text``, ``tokens`` (ids), ``task`` and ``partners`` (list of
        dicts ``Object``, ``image``, ``role`` positive/negative, ``distance_um``, ``direction``)."""
        cs = self.prepare(cells, markers)
        if object_ids is None:
            idx = np.arange(len(cs))
        else:
            wanted = {str(o) for o in (object_ids if np.ndim(object_ids) else [object_ids])}
            idx = np.flatnonzero([str(o) in wanted for o in cs.object_id])
            found = {str(cs.object_id[i]) for i in idx}
            missing = sorted(wanted - found)
            if missing:
                have = sorted(cs.object_id, key=lambda o: (str(type(o)), o))
                span = (f"{have[0]} to {have[-1]}" if len(have) > 1 else str(have[0])) if have else "none"
                raise ModelInputError("cells", f"no cell with Object {', '.join(missing[:10])} "
                                               f"(the {len(have)} cells have Object ids {span})")
        out = []
        for i in idx:
            words, values = cs.context(int(i), self.sentence, self.prompt)
            words = words + task_words(task)
            values = (values if self.sentence.values else [0.0] * len(values)) + [0.0] * 3
            parts = [
                {"Object": _py(cs.object_id[j]), "image": str(cs.image[j]), "role": role, "distance_um": round(d, 2),
                 "direction": direction_word(dx, dy)}
                for j, role, d, dx, dy in (cs.partners(int(i)) if self.prompt.format == "multi" else [])
            ]
            out.append({"Object": _py(cs.object_id[i]), "image": str(cs.image[i]), "task": task, "text": " ".join(words),
                        "tokens": self.tokenizer.encode(words), "values": values, "partners": parts})
        return out

    def encode_context(self, cs: CellSet, i: int, present=None, sentence_cache: dict | None = None
                       ) -> tuple[list[int], list[float]]:
        """Token ids of cell ``i``'s context and the value each word carries (:mod:`.numeric`; all 0 for a
        model that reads words only)."""
        words, values = cs.context(i, self.sentence, self.prompt, present, sentence_cache)
        return self.tokenizer.encode(words), (values if self.sentence.values else [0.0] * len(words))

    # --- prediction ------------------------------------------------------------------------------
    def panel_coverage(self, cells: pd.DataFrame | CellSet | list[str], markers=None) -> PanelCoverage:
        """Which of the model's markers a table (its marker columns, or ``markers``), a prepared cell set
        or a list of marker names carries; ``ok`` says whether that is enough to predict."""
        domain = self.info.get("domain", {}) if isinstance(self.info.get("domain"), dict) else {}
        threshold = float(domain.get("min_marker_fraction", DEFAULT_MIN_MARKER_FRACTION))
        trained_on = str(domain.get("trained_on") or self.info.get("name") or "")
        if isinstance(cells, CellSet):
            panel = list(cells.used_markers)
        elif isinstance(cells, pd.DataFrame):
            panel = list(markers) if markers is not None else marker_columns(cells)
        else:
            panel = list(cells)
        coverage = panel_coverage(self.markers, panel, threshold, trained_on)
        if coverage.missing and coverage.present:
            given = {canonical_marker(str(m)) for m in panel}
            coverage.check = panel_check(self, [m for m in self.markers if m in given])
        return coverage

    def predict_cells(self, cells: pd.DataFrame | CellSet, markers=None, image: str | None = None,
                      batch_size: int | None = None, tasks=("type", "status"), progress=None,
                      source: str = "cells", threads: int | None = None,
                      allow_partial_panel: bool = False) -> Predictions:
        """Cell types and clinical status of every cell (see :class:`Predictions`).

        ``cells``: a table with ``Object``, ``x``, ``y`` (um), marker columns (any panel: names go
        through the alias table; unknown markers are warned about and ignored) and optionally
        ``image`` (several images at once). ``progress(done, total)`` is called after each batch;
        returning ``False`` cancels (the result then has ``cancelled=True``). ``threads``: batches
        scored at once on the CPU, each on one torch thread (default: every available core); the probabilities
        do not depend on it.

        Refused (:class:`~spatial2sentence.domain.PanelCoverageError`) when the input carries fewer of
        the model's markers than the model needs (:meth:`panel_coverage`), unless ``allow_partial_panel``;
        the result's ``coverage`` says what was present either way.
        """
        coverage = self.panel_coverage(cells, markers)
        # no shared marker at all: prepare() says so (or reads a phenotype-only table)
        if coverage.present and not coverage.ok and not allow_partial_panel:
            raise PanelCoverageError(source if source != "cells" else image or source, coverage.refusal())
        cs = self.prepare(cells, markers, image, source=source)
        pred = predict_cellset(self, cs, batch_size=batch_size or PREDICT_BATCH_SIZE, tasks=tasks,
                               progress=progress, threads=threads)
        pred.coverage = coverage
        return pred

    def predict(self, adata, image_key: str | None = None, copy: bool = False, allow_partial_panel: bool = False,
                **kwargs):
        """Predict the cells of an ``AnnData`` and write ``obs``/``obsm``/``uns`` entries
        (:func:`~spatial2sentence.anndata_io.predict_anndata`)."""
        return predict_anndata(self, adata, image_key=image_key, copy=copy,
                               allow_partial_panel=allow_partial_panel, **kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.lm.parameters())
