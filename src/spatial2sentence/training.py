"""Multi-task training of the Spatial2Sentence model (CPU or CUDA), seeded and resumable.

Each step draws a batch of prompts; each prompt's task is drawn from ``task_mix``:

* ``type``: anchor cell with a known cell type (sampling weight ~ count(type) ** -class_balance);
* ``status``: anchor cell of an image with a known clinical status (balanced across statuses);
  phenotype-only cells (no markers) take part in this task only;
* ``pair``: anchor + one of its partners, answer ``similar`` (positive) or ``dissimilar`` (negative).

With probability ``panel_subset_prob`` a prompt only sees a random subset of the panel (size drawn
log-uniformly between ``panel_subset_min`` and the panel size; the same subset for anchor and partners),
so that images carrying only part of the panel are read instead of collapsing. The loss is the
cross-entropy of the answer token only. Validation images are held out (split by image); the best
validation loss is kept and training stops after ``patience`` evaluations without improvement.
``resume=True`` continues from ``<checkpoint_dir>/state.pt`` (default ``<out>/checkpoint``).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .aliases import canonical_marker
from .anndata_io import anndata_cells
from .cellset import CellSet, concat_cellsets, find_column, marker_columns, prepare_cells, TYPE_COLS, STATUS_COLS
from .errors import ModelInputError
from .numeric import VALUE_MAX, attach_value_embedding, embed_inputs, has_values
from .model import S2SModel, build_lm, resolve_device
from .normalize import Normalizer
from .prompts import PAIR_ANSWERS, pair_prompt, task_words
from .sentences import status_token, type_token
from .settings import ModelSettings, PairSettings, PromptSettings, SentenceSettings, TrainSettings
from .threads import torch_threads
from .tissue import TISSUE, random_window, tissue_words
from .tokenizer import WordTokenizer


@dataclass
class TrainResult:
    model: object
    history: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    stopped_early: bool = False
    steps_done: int = 0
    seconds: float = 0.0


def _labels(values, given: list[str] | None, what: str, source: str) -> list[str]:
    found = sorted({str(v) for v in pd.Series(values, dtype=object).dropna()} - {"", "nan"})
    if given is None:
        return found
    extra = sorted(set(found) - set(given))
    if extra:
        raise ModelInputError(
            source, f"the data's {what} labels differ from the configured label set: {extra} are not in {given}"
        )
    unseen = sorted(set(given) - set(found))
    if unseen:
        warnings.warn(f"{source}: {what} labels never seen in the training data: {unseen}", stacklevel=2)
    return list(given)


def split_images(images: np.ndarray, fraction: float, seed: int, strata: dict | None = None) -> set:
    """Validation images: a seeded ``fraction`` of the images (at least one when there are two)."""
    uniq = sorted(pd.unique(images))
    if len(uniq) < 2 or fraction <= 0:
        return set()
    rng = np.random.default_rng(seed + 7919)
    n_val = max(1, int(round(fraction * len(uniq))))
    return set(rng.choice(uniq, n_val, replace=False).tolist())


_STEP_OBSERVERS: list = []


@contextmanager
def observe_steps(fn):
    """Call ``fn(step, model)`` at every evaluation step (``eval_every``) and the last step of the trainings
    run inside the block (the model in eval mode; training resumes afterwards). For measurements such as
    learning curves (benchmarks/learning_curve.py); nothing the observer returns is used."""
    _STEP_OBSERVERS.append(fn)
    try:
        yield
    finally:
        _STEP_OBSERVERS.remove(fn)


def split_blocks(images: np.ndarray, x: np.ndarray, fraction: float) -> np.ndarray:
    """Validation cells: in every image, the right-most ``fraction`` of its cells (by x): a spatial block,
    never random cells. For training sets of a few images (the toy crops, the CyCIF strips), where holding
    out a whole image would take half or a third of the training cells. Validation cells' labels are only
    ever answers of validation prompts; their sentences may appear as partners of training cells."""
    images = np.asarray(images).astype(str)
    out = np.zeros(len(images), bool)
    if fraction <= 0:
        return out
    for im in pd.unique(images):
        sel = np.flatnonzero(images == im)
        if sel.size < 10:
            continue
        cut = np.quantile(x[sel], 1.0 - fraction)
        out[sel[x[sel] > cut]] = True
    return out


class PromptSampler:
    """Draws training / validation prompts from a CellSet (deterministic given its generator)."""

    def __init__(self, model, cs: CellSet, cells: np.ndarray, ts: TrainSettings):
        self.model, self.cs, self.ts = model, cs, ts
        self.cells = cells
        self.M = len(cs.markers)
        ph = cs.is_phenotype
        tl = set(model.type_labels)
        sl = set(model.status_labels)
        ct = cs.cell_type if cs.cell_type is not None else np.full(len(cs), "", object)
        st = cs.status if cs.status is not None else np.full(len(cs), "", object)
        self.type_cells = cells[np.array([(not ph[i]) and ct[i] in tl for i in cells], bool)] if len(cells) else cells
        self.status_cells = cells[np.array([st[i] in sl for i in cells], bool)] if len(cells) else cells
        self.type_cdf = np.cumsum(self._weights(ct[self.type_cells], ts.class_balance))
        self.status_cdf = np.cumsum(self._weights(st[self.status_cells], 1.0))
        has = (cs.pairs.pos_idx[cells] >= 0).any(1) | (cs.pairs.neg_idx[cells] >= 0).any(1)
        self.pair_cells = cells[has]
        # tissue task: the status-labelled images (each one status), their cells, drawn evenly by status
        self.tissue_images: list[np.ndarray] = []
        tissue_status = []
        if model.prompt.tissue and len(self.status_cells):
            for im in pd.unique(cs.image[self.status_cells]):
                members = self.status_cells[cs.image[self.status_cells] == im]
                if len(members) >= 2:
                    self.tissue_images.append(members)
                    tissue_status.append(str(st[members[0]]))
        self.tissue_cdf = np.cumsum(self._weights(np.asarray(tissue_status, dtype=object), 1.0))
        self.full_cache = dict(zip(range(len(cs)), cs.sentences(np.arange(len(cs)), model.sentence)))
        mix = {k: float(v) for k, v in ts.task_mix.items() if v > 0}
        for k in mix:
            if k not in ("type", "status", "pair", "tissue"):
                raise ModelInputError("task_mix", f"unknown task {k!r} (type, status, pair, tissue)")
        avail = {"type": len(self.type_cells), "status": len(self.status_cells), "pair": len(self.pair_cells),
                 "tissue": len(self.tissue_images)}
        mix = {k: v for k, v in mix.items() if avail[k] > 0}
        if not mix:
            raise ModelInputError("training data", "no cell carries a label usable by any task")
        self.tasks = list(mix)
        self.task_p = np.array([mix[k] for k in self.tasks]) / sum(mix.values())

    @staticmethod
    def _weights(labels: np.ndarray, power: float) -> np.ndarray:
        if len(labels) == 0:
            return np.zeros(0)
        u, inv, cnt = np.unique(labels.astype(str), return_inverse=True, return_counts=True)
        w = cnt[inv].astype(float) ** (-power)
        return w / w.sum()

    def _subset(self, rng) -> np.ndarray | None:
        if rng.random() >= self.ts.panel_subset_prob or self.M <= self.ts.panel_subset_min:
            return None
        lo, hi = math.log(self.ts.panel_subset_min), math.log(self.M)
        k = int(round(math.exp(rng.uniform(lo, hi))))
        k = min(max(k, self.ts.panel_subset_min), self.M)
        present = np.zeros(self.M, bool)
        present[rng.choice(self.M, k, replace=False)] = True
        return present

    def draw(self, rng) -> tuple[list[str], list[float], str]:
        """One prompt (words up to ``answer``), the value each word carries (:mod:`.numeric`) and its
        answer word."""
        task = self.tasks[min(int(np.searchsorted(np.cumsum(self.task_p), rng.random())), len(self.tasks) - 1)]
        m, cs = self.model, self.cs
        if task == "tissue":
            k = min(int(np.searchsorted(self.tissue_cdf, rng.random() * self.tissue_cdf[-1])),
                    len(self.tissue_images) - 1)
            members = self.tissue_images[k]
            words, values = tissue_words(cs, random_window(cs, members, rng))
            tw = task_words("status")
            return words + tw, values + [0.0] * len(tw), status_token(cs.status[members[0]])
        present = self._subset(rng)
        cache = self.full_cache if present is None else None
        if task == "pair":
            i = int(self.pair_cells[rng.integers(len(self.pair_cells))])
            parts = cs.partners(i)
            j, role, *_ = parts[int(rng.integers(len(parts)))]
            if cache is None:
                a, b = cs.sentences([i, j], m.sentence, present)
            else:
                a, b = cache[i], cache[j]
            if m.sentence.partner_words > 0:
                b = b[:m.sentence.partner_words]
            values = [0.0] * 3 + cs.word_values(i, a) + [0.0] * 3 + cs.word_values(j, b) + [0.0] * 4
            return (pair_prompt(a, b), values, PAIR_ANSWERS[0] if role == "positive" else PAIR_ANSWERS[1])
        if task == "type":
            i = int(self.type_cells[min(np.searchsorted(self.type_cdf, rng.random() * self.type_cdf[-1]),
                                        len(self.type_cells) - 1)])
            answer = type_token(cs.cell_type[i])
        else:
            i = int(self.status_cells[min(np.searchsorted(self.status_cdf, rng.random() * self.status_cdf[-1]),
                                          len(self.status_cells) - 1)])
            answer = status_token(cs.status[i])
        words, values = cs.context(i, m.sentence, m.prompt, present, sentence_cache=cache)
        tw = task_words(task)
        return words + tw, values + [0.0] * len(tw), answer

    def batch(self, rng, n: int):
        """``(ids, answers, tasks, values)`` of ``n`` prompts; ``values`` is None for a model whose words
        carry no values."""
        tok = self.model.tokenizer
        seqs, answers, tasks, values = [], [], [], []
        noise = float(self.ts.value_noise)
        for _ in range(n):
            words, vals, ans = self.draw(rng)
            if noise > 0 and self.model.sentence.values:  # jitter the carried values (not the words)
                v = np.asarray(vals, np.float64)
                on = v > 0
                v[on] = np.clip(v[on] + rng.normal(0.0, noise, int(on.sum())), 1e-3, VALUE_MAX)
                vals = v.tolist()
            seqs.append(tok.encode(words))
            answers.append(tok.vocab[ans])
            tasks.append("tissue" if words[1] == TISSUE else words[-2])
            values.append(vals)
        return seqs, answers, tasks, (values if self.model.sentence.values else None)


def _encode_batch(seqs, answers, pad_id, eos_id, device, values=None):
    """Right-padded ids with the answer (and EOS) appended; labels -100 except at the answer; the values
    the words carry (0 for the answer, EOS and padding), or None."""
    import torch

    full = [s + [a, eos_id] for s, a in zip(seqs, answers)]
    n = max(len(s) for s in full)
    ids = torch.full((len(full), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(full), n), dtype=torch.long)
    labels = torch.full((len(full), n), -100, dtype=torch.long)
    vals = torch.zeros((len(full), n), dtype=torch.float32) if values is not None else None
    for i, (s, f) in enumerate(zip(seqs, full)):
        ids[i, : len(f)] = torch.as_tensor(f)
        mask[i, : len(f)] = 1
        labels[i, len(s)] = answers[i]  # loss on the answer token only
        if vals is not None:
            vals[i, : len(s)] = torch.as_tensor(values[i], dtype=torch.float32)
    return ids.to(device), mask.to(device), labels.to(device), (vals.to(device) if vals is not None else None)


def _logits(lm, ids, mask, values=None):
    if values is None or not has_values(lm):
        return lm(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return lm(inputs_embeds=embed_inputs(lm, ids, values), attention_mask=mask, use_cache=False).logits


def _loss(lm, ids, mask, labels, values=None):
    import torch.nn.functional as F

    logits = _logits(lm, ids, mask, values)[:, :-1].float()
    tgt = labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100), logits, tgt


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint, read without running code from it.

    Why: ``torch.load`` unpickles, and a pickle can run arbitrary code; ``weights_only=True`` accepts
    tensors and plain containers only (the RNG state is stored as JSON text for that reason), so a crafted
    ``state.pt`` is refused instead of executed.
    """
    import pickle

    import torch

    try:
        st = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelInputError(path, f"not a napari-s2s training checkpoint (refused, nothing run from it): "
                                    f"{msg[:200]}") from None
    need = {"model", "opt", "sched", "rng", "torch_rng", "step", "history", "best", "bad", "best_state"}
    if not isinstance(st, dict) or not need <= set(st) or not isinstance(st["rng"], str):
        raise ModelInputError(path, "not a napari-s2s training checkpoint (missing or old-format entries); "
                                    "delete it to train from the start")
    return st


def prompt_length(sentence: SentenceSettings, pairs: PairSettings, prompt: PromptSettings, n_markers: int,
                  n_labels: int = 0) -> int:
    """The longest prompt (tokens, answer and [EOS] included) these settings can write for a panel."""
    w, wp = sentence.words_per_sentence(n_markers), sentence.words_per_partner(n_markers)
    partners = pairs.n_pos + pairs.n_neg if prompt.format == "multi" else 0
    multi = 4 + w + partners * (5 + wp) + 5  # [BOS] cell : <w> ; + partner lines + task t answer X [EOS]
    if partners and prompt.neighbourhood_k > 0:
        multi += 3 + prompt.neighbourhood_words  # around : <words> ;
    pair = w + wp + 11 if partners else 0  # [BOS] cell : <w> ; partner : <wp> ; task pair answer X [EOS]
    # [BOS] tissue : <markers or phenotypes> ; task status answer X [EOS]
    tissue = 4 + max(n_markers, n_labels) + 6 if prompt.tissue else 0
    return max(multi, pair, tissue)


def fit_positions(ms: ModelSettings, sentence, pairs, prompt, n_markers: int, log=print,
                  n_labels: int = 0) -> ModelSettings:
    """``ms`` with ``max_positions`` raised (to a multiple of 32) when the longest prompt would not fit:
    levels sentences carry every present marker, so a 37-marker panel with 3 partners needs 172 tokens."""
    from dataclasses import replace

    need = prompt_length(sentence, pairs, prompt, n_markers, n_labels)
    if need <= ms.max_positions:
        return ms
    new = -(-need // 32) * 32
    log(f"max_positions raised from {ms.max_positions} to {new} (longest prompt {need} tokens)")
    return replace(ms, max_positions=new)


def add_level_words(model, n_levels: int, seed: int) -> None:
    """Give a freshly created model the level words ``MARKER:1..n`` (``levels`` sentences): a tokenizer
    with them and a fresh LM of the new vocabulary size (``S2SModel.create`` builds marker words only)."""
    labels = ([type_token(t) for t in model.type_labels] + [status_token(s) for s in model.status_labels])
    tok = WordTokenizer.build(model.markers, labels, model.prompt.distance_bins_um, n_levels=n_levels)
    model.tokenizer = tok
    model.lm = build_lm(model.model_settings, len(tok), tok, seed).to(model.device)


SELECT_BY = ("loss", "accuracy")


def selection_score(ev: dict, select_by: str) -> float:
    """How good a validation result is (higher is better) for early stopping and the kept state.

    ``"loss"``: minus the mean answer loss over tasks. ``"accuracy"``: the accuracy of the main task (cell
    type where the validation set asks for it, else the tissue prompts' clinical status, else the cells'
    status), the loss only breaking ties. Why
    accuracy: the loss rises from over-confident wrong answers long before accuracy stops improving; the
    v2 benchmark rule stopped on the loss at step ~280 and lost 5-7 points of held-out accuracy
    (benchmarks/learning_curve.py)."""
    if not ev or "loss" not in ev:
        return -float("inf")
    if select_by == "loss":
        return -float(ev["loss"])
    if select_by != "accuracy":
        raise ModelInputError("train settings", f"unknown select_by {select_by!r} ({', '.join(SELECT_BY)})")
    acc = ev.get("type_acc", ev.get("tissue_acc", ev.get("status_acc")))
    return (float(acc) if acc is not None else 0.0) - 1e-3 * float(ev["loss"])


def evaluate(model, val_set, batch_size: int = 256) -> dict:
    """Mean answer loss and accuracy per task over a fixed validation prompt set."""
    import torch

    seqs, answers, tasks, values = val_set
    lm = model.lm
    lm.eval()
    tot, res = 0.0, {}
    per = {t: [0.0, 0, 0] for t in set(tasks)}
    with torch.no_grad():
        for c0 in range(0, len(seqs), batch_size):
            s, a, t = seqs[c0:c0 + batch_size], answers[c0:c0 + batch_size], tasks[c0:c0 + batch_size]
            v = values[c0:c0 + batch_size] if values is not None else None
            ids, mask, labels, vals = _encode_batch(s, a, model.tokenizer.pad_id, model.tokenizer.eos_id,
                                                    model.device, v)
            logits = _logits(lm, ids, mask, vals)[:, :-1].float()
            tgt = labels[:, 1:]
            rows, cols = torch.nonzero(tgt >= 0, as_tuple=True)
            lg = logits[rows, cols]
            for task in set(t):
                sel = torch.as_tensor([x == task for x in t])
                lid = torch.as_tensor(model.label_ids("status" if task == "tissue" else task))
                sub = lg[sel][:, lid]
                y = torch.as_tensor([lid.tolist().index(v) for v in tgt[rows, cols][sel].tolist()])
                lp = torch.log_softmax(sub, -1)
                per[task][0] += float(-lp[torch.arange(len(y)), y].sum())
                per[task][1] += int((sub.argmax(-1) == y).sum())
                per[task][2] += len(y)
    for task, (l, c, n) in per.items():
        res[f"{task}_loss"] = l / max(n, 1)
        res[f"{task}_acc"] = c / max(n, 1)
        tot += l / max(n, 1)
    res["loss"] = tot / max(len(per), 1)
    return res


def prepare_training(df: pd.DataFrame, sentence: SentenceSettings, type_labels=None, status_labels=None,
                     markers=None, source="training data"):
    """Panel (canonical), label sets and a fitted normaliser from a training table."""
    cols = marker_columns(df) if markers is None else list(markers)
    canon, seen = [], set()
    for c in cols:
        k = canonical_marker(c)
        if k not in seen:
            seen.add(k)
            canon.append(k)
    tcol, scol = find_column(df, TYPE_COLS), find_column(df, STATUS_COLS)
    types = _labels(df[tcol] if tcol else [], type_labels, "cell type", source)
    stats = _labels(df[scol] if scol else [], status_labels, "clinical status", source)
    if not types and not stats:
        raise ModelInputError(source, "no cell_type or stage/status column with labels")
    return canon, types, stats


def train(
    tables: list[pd.DataFrame] | pd.DataFrame,
    out: str | Path,
    sentence: SentenceSettings | None = None,
    pairs: PairSettings | None = None,
    prompt: PromptSettings | None = None,
    model_settings: ModelSettings | None = None,
    train_settings: TrainSettings | None = None,
    type_labels: list[str] | None = None,
    status_labels: list[str] | None = None,
    resume: bool = False,
    progress_bar: bool = True,
    device: str = "cpu",
    info: dict | None = None,
    log=print,
) -> TrainResult:
    """Train a model on one or more cells tables and save it to ``out``; see the module doc.

    ``train_settings.num_threads`` applies to this call only (torch's setting is restored afterwards)."""
    ts = train_settings or TrainSettings()
    ckpt = (Path(ts.checkpoint_dir) if ts.checkpoint_dir else Path(out) / "checkpoint") / "state.pt"
    if resume and ckpt.exists():
        load_checkpoint(ckpt)  # a bad or hostile checkpoint is refused before any data is read
    with torch_threads(ts.num_threads):
        return _train(tables, out, sentence, pairs, prompt, model_settings, ts, type_labels, status_labels,
                      resume, progress_bar, device, info, log)


def _train(tables, out, sentence, pairs, prompt, model_settings, ts, type_labels, status_labels, resume,
           progress_bar, device, info, log) -> TrainResult:
    import torch

    sentence, pairs = sentence or SentenceSettings(), pairs or PairSettings()
    prompt, model_settings = prompt or PromptSettings(), model_settings or ModelSettings()
    tables = [tables] if isinstance(tables, pd.DataFrame) else list(tables)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # panel and labels over all tables; expression tables define the panel
    panel: list[str] = []
    all_types, all_stats = [], []
    for t in tables:
        canon, types, stats = prepare_training(t, sentence, type_labels, status_labels)
        panel += [c for c in canon if c not in panel]
        all_types += types
        all_stats += stats
    types = type_labels or sorted(set(all_types))
    stats = status_labels or sorted(set(all_stats))
    # split by image (image names made unique per table)
    rng_split = ts.seed
    norm = Normalizer(cofactor=sentence.cofactor, scaling=sentence.scaling)
    expr_train = []
    split_tables = []
    for k, t in enumerate(tables):
        t = t.copy()
        icol = find_column(t, ("image", "imageID", "image_id", "ImageNumber", "sample"))
        if icol is None:
            t["image"] = f"table{k}"
            icol = "image"
        t[icol] = (f"t{k}:" if len(tables) > 1 else "") + t[icol].astype(str)
        if ts.val_split == "blocks":
            xcol = find_column(t, ("x", "X", "Pos_X", "X_position", "centroid-1", "Location_Center_X", "X_centroid"))
            is_val = split_blocks(t[icol].to_numpy(), t[xcol].to_numpy(np.float64) if xcol else
                                  np.arange(len(t), dtype=np.float64), ts.val_fraction)
        else:
            val_imgs = split_images(t[icol].to_numpy(), ts.val_fraction, rng_split + k)
            is_val = t[icol].isin(val_imgs).to_numpy()
        split_tables.append((t, is_val))
        cols = marker_columns(t)
        if cols:
            expr_train.append(t.loc[~is_val, cols].rename(columns=canonical_marker))
    if expr_train:
        fit_df = pd.concat(expr_train, ignore_index=True)
        fit_df = fit_df.loc[:, ~fit_df.columns.duplicated()]
        fit_values = (fit_df[panel].to_numpy(np.float64) if set(panel) <= set(fit_df.columns) else
                      fit_df.reindex(columns=panel).to_numpy(np.float64))
        norm.fit(fit_values, panel)
        if sentence.encoding == "levels":
            norm.fit_levels(fit_values, panel, sentence.n_levels, sentence.level_threshold, sentence.level_bins)
    dev = str(resolve_device(device))  # the core's one device check
    model_settings = fit_positions(model_settings, sentence, pairs, prompt, len(panel), log, len(types))
    model = S2SModel.create(panel, types, stats, norm, sentence, pairs, prompt, model_settings, seed=ts.seed,
                            device=dev)
    if sentence.encoding == "levels":
        add_level_words(model, sentence.n_levels, ts.seed)
    if sentence.values:
        attach_value_embedding(model.lm, ts.seed)
    sets, val_flags = [], []
    for k, (t, is_val) in enumerate(split_tables):
        cs = prepare_cells(t, panel, norm, source=f"table {k}")
        sets.append(cs)
        val_flags.append(is_val)
    cs = concat_cellsets(sets) if len(sets) > 1 else sets[0]
    is_val = np.concatenate(val_flags)
    cs.build_pairs(pairs, seed=ts.seed)
    train_cells, val_cells = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    sampler = PromptSampler(model, cs, train_cells, ts)
    val_sampler = PromptSampler(model, cs, val_cells, replace(ts, value_noise=0.0)) if len(val_cells) else None
    val_set = val_sampler.batch(np.random.default_rng(ts.seed + 1), ts.eval_prompts) if val_sampler else None

    lm = model.lm
    lm.train()
    opt = torch.optim.AdamW(lm.parameters(), lr=ts.lr, weight_decay=ts.weight_decay)

    def lr_at(step):
        if step < ts.warmup_steps:
            return (step + 1) / ts.warmup_steps
        prog = (step - ts.warmup_steps) / max(1, ts.steps - ts.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = np.random.default_rng(ts.seed)
    torch.manual_seed(ts.seed)
    step, history, best, bad = 0, [], {"loss": float("inf")}, 0
    best_state = None
    ckpt = (Path(ts.checkpoint_dir) if ts.checkpoint_dir else out / "checkpoint") / "state.pt"
    if resume and ckpt.exists():
        st = load_checkpoint(ckpt)
        lm.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        rng.bit_generator.state = json.loads(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        step, history, best, bad, best_state = st["step"], st["history"], st["best"], st["bad"], st["best_state"]
        log(f"resumed from {ckpt} at step {step}")
    t0 = time.time()
    stopped = False
    bar = None
    if progress_bar:
        from tqdm import tqdm

        bar = tqdm(total=ts.steps, initial=step, desc="training", unit="step")
    running = None
    while step < ts.steps:
        lm.train()
        seqs, answers, _, values = sampler.batch(rng, ts.batch_size)
        ids, mask, labels, vals = _encode_batch(seqs, answers, model.tokenizer.pad_id, model.tokenizer.eos_id,
                                                model.device, values)
        loss, _, _ = _loss(lm, ids, mask, labels, vals)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        lv = loss.item()
        running = lv if running is None else 0.95 * running + 0.05 * lv
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
        last = step == ts.steps
        if _STEP_OBSERVERS and (step % ts.eval_every == 0 or last):
            lm.eval()
            for fn in list(_STEP_OBSERVERS):
                fn(step, model)
            lm.train()
        if val_set is not None and (step % ts.eval_every == 0 or last):
            ev = evaluate(model, val_set)
            ev["step"] = step
            ev["train_loss"] = running
            history.append(ev)
            msg = " ".join(f"{k}={v:.3f}" for k, v in ev.items() if k not in ("step",))
            (bar.write if bar is not None else log)(f"step {step}: {msg}")
            if selection_score(ev, ts.select_by) > selection_score(best, ts.select_by) + 1e-6:
                best, bad = dict(ev), 0
                best_state = {k: v.detach().clone() for k, v in lm.state_dict().items()}
            else:
                bad += 1
                if bad >= ts.patience:
                    stopped = True
        if step % ts.checkpoint_every == 0 or stopped or last:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": lm.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(), "step": step,
                        "history": history, "best": best, "bad": bad, "best_state": best_state}, ckpt)
        if stopped:
            (bar.write if bar is not None else log)(f"early stopping at step {step} (best step {best.get('step')})")
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        lm.load_state_dict(best_state)
    lm.eval()
    seconds = time.time() - t0
    model.info = {
        **(info or {}),
        "training": {
            "steps_done": step, "stopped_early": stopped, "seconds": round(seconds, 1),
            "best_validation": best if best_state is not None else None,
            "history": history,
            "n_train_cells": int(len(train_cells)), "n_val_cells": int(len(val_cells)),
            "n_train_images": int(len(pd.unique(cs.image[train_cells]))),
            "n_val_images": int(len(pd.unique(cs.image[val_cells]))) if len(val_cells) else 0,
            "settings": ts.to_dict(),
            "n_parameters": model.num_parameters(),
        },
    }
    model.save_pretrained(out, card=model_card(model))
    return TrainResult(model, history, best, stopped, step, seconds)


def sentence_description(st: SentenceSettings) -> str:
    """One line saying how cells become words."""
    if st.encoding == "levels":
        return (f"every marker above {st.level_threshold} (range scale) as one word MARKER:L, L = 1..{st.n_levels} "
                f"({st.level_bins} bins per marker, learned on the training cells)"
                + (f", partner lines their {st.partner_words} highest words" if st.partner_words else ""))
    if st.encoding == "values":
        return (f"every marker above {st.level_threshold} (range scale), highest first, each word carrying its "
                f"value ({'values on' if st.values else 'VALUES OFF'})"
                + (f", partner lines their {st.partner_words} highest words" if st.partner_words else ""))
    return f"top {st.top_k} markers ranked by {st.rank_by} (value > {st.threshold})"


def model_card(model, evaluation: dict | None = None) -> str:
    """A Markdown model card from the model's settings, training summary and held-out evaluation."""
    info = model.info
    tr = info.get("training", {})
    lines = [
        f"# {info.get('name', 'Spatial2Sentence model')}",
        "",
        info.get("description", ""),
        "",
        "## Model",
        f"- architecture: {model.model_settings.architecture}, {model.model_settings.num_layers} layers, "
        f"hidden {model.model_settings.hidden_size}, {tr.get('n_parameters', model.num_parameters()):,} parameters; "
        f"word-level vocabulary of {len(model.tokenizer)} tokens",
        f"- prompt format: {model.prompt.format}; sentences: {sentence_description(model.sentence)}, "
        f"arcsinh cofactor {model.sentence.cofactor}, scaling {model.sentence.scaling}",
        f"- pairs: {model.pair_settings.n_pos} positive(s) within {model.pair_settings.pos_radius_um} um "
        f"(similarity >= q{model.pair_settings.pos_sim_quantile}), {model.pair_settings.n_neg} negative(s) "
        f">= {model.pair_settings.neg_min_dist_um} um (similarity <= q{model.pair_settings.neg_sim_quantile})",
        f"- panel ({len(model.markers)}): {', '.join(model.markers)}",
        f"- cell types ({len(model.type_labels)}): {', '.join(model.type_labels)}",
        f"- clinical status ({len(model.status_labels)}): {', '.join(model.status_labels)}",
        "",
        "## Training",
    ]
    for k in ("data", "recipe", "command"):
        if k in info:
            lines.append(f"- {k}: {info[k]}")
    if tr:
        lines.append(
            f"- {tr.get('steps_done')} steps in {tr.get('seconds')} s (early stop: {tr.get('stopped_early')}); "
            f"{tr.get('n_train_cells')} training cells in {tr.get('n_train_images')} images, "
            f"{tr.get('n_val_cells')} validation cells in {tr.get('n_val_images')} images (split by image)"
        )
        bv = tr.get("best_validation")
        if bv:
            lines.append("- best validation (prompt level): " + ", ".join(
                f"{k} {v:.3f}" for k, v in bv.items() if k.endswith("_acc") or k == "loss"))
        lines.append(f"- settings: `{json.dumps(tr.get('settings', {}))}`")
    ev = evaluation if evaluation is not None else info.get("evaluation")
    if ev:
        lines += ["", "## Held-out evaluation", ""]
        for name, res in ev.items():
            lines.append(f"### {name}")
            if isinstance(res, dict):
                for k, v in res.items():
                    if isinstance(v, float):
                        v = f"{v:.4f}"
                    elif isinstance(v, (dict, list)):
                        v = f"`{json.dumps(v, default=str)}`"
                    lines.append(f"- {k}: {v}")
            else:
                lines.append(str(res))
            lines.append("")
    if info.get("notes"):
        lines += ["## Notes", "", info["notes"], ""]
    return "\n".join(lines) + "\n"


def fit_anndata(adata, label_key: str, out: str | Path, status_key: str | None = None,
                image_key: str | None = None, **train_kwargs):
    """Train a model on ``adata`` (markers in ``X``, positions in ``obsm['spatial']``, labels in
    ``obs[label_key]``, the image in ``obs[image_key]``); returns the trained
    :class:`~spatial2sentence.model.S2SModel` (also written to ``out``)."""
    cells, _ = anndata_cells(adata, image_key, label_key, status_key)
    return train(cells, out, **train_kwargs).model
