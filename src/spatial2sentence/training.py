"""Multi-task training of the Spatial2Sentence model (CPU or CUDA), seeded and resumable.

Each step draws a batch of prompts (:class:`~spatial2sentence.training_data.PromptSampler`: tasks
``type``, ``status``, ``pair`` and ``tissue`` mixed by ``task_mix``). The loss is the cross-entropy of
the answer token only. Validation holds out whole images (or, for a few images, a spatial block of each:
:mod:`.training_data`); the best validation score (``select_by``) is kept and training stops after
``patience`` evaluations without improvement. ``resume=True`` continues from
``<checkpoint_dir>/state.pt`` (default ``<out>/checkpoint``).

torch is imported with this module (as with every module that scores or trains: :mod:`.threads`); the
commands import the library only once they have checked their inputs (benchmarks/cold_start.py).
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .anndata_io import anndata_cells
from .errors import ModelInputError
from .model import S2SModel, build_lm, resolve_device
from .numeric import attach_value_embedding, embed_inputs, has_values
from .positions import attention_mask, training_positions
from .sentences import status_token, type_token
from .settings import ModelSettings, PairSettings, PromptSettings, SentenceSettings, TrainSettings
from .threads import torch_rng_kept, torch_threads
from .tokenizer import WordTokenizer
from .training_data import PromptSampler, fit_normalizer, panel_and_labels, split_validation, training_cells


@dataclass
class TrainResult:
    model: object
    history: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    stopped_early: bool = False
    steps_done: int = 0
    seconds: float = 0.0


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


def _encode_batch(seqs, answers, pad_id, eos_id, device, values=None):
    """Right-padded ids with the answer (and EOS) appended; labels -100 except at the answer; the values
    the words carry (0 for the answer, EOS and padding), or None."""
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
    kw = {"attention_mask": attention_mask(lm, ids, mask, lm.dtype), "use_cache": False}
    pos = training_positions(lm, ids)
    if pos is not None:  # per line (spatial2sentence.positions); else the model's own 0..t-1
        kw["position_ids"] = pos
    if values is None or not has_values(lm):
        return lm(input_ids=ids, **kw).logits
    return lm(inputs_embeds=embed_inputs(lm, ids, values), **kw).logits


def _loss(lm, ids, mask, labels, values=None):

    logits = _logits(lm, ids, mask, values)[:, :-1].float()
    tgt = labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100), logits, tgt


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint, read without running code from it.

    Why: ``torch.load`` unpickles, and a pickle can run arbitrary code; ``weights_only=True`` accepts
    tensors and plain containers only (the RNG state is stored as JSON text for that reason), so a crafted
    ``state.pt`` is refused instead of executed.
    """
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
    # [BOS] tissue : <markers or phenotypes> [types] ; task status answer X [EOS]
    words = n_markers + n_labels if prompt.tissue_types else max(n_markers, n_labels)
    tissue = 4 + words + 6 if prompt.tissue else 0
    return max(multi, pair, tissue)


def fit_positions(ms: ModelSettings, sentence, pairs, prompt, n_markers: int, log=print,
                  n_labels: int = 0) -> ModelSettings:
    """``ms`` with ``max_positions`` raised (to a multiple of 32) when the longest prompt would not fit:
    levels sentences carry every present marker, so a 37-marker panel with 3 partners needs 172 tokens."""
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
    model.number_prompts()


SELECT_BY = ("loss", "accuracy", "balanced_accuracy")


def selection_score(ev: dict, select_by: str) -> float:
    """How good a validation result is (higher is better) for early stopping and the kept state.

    ``"loss"``: minus the mean answer loss over tasks. ``"accuracy"``: the accuracy of the main task (cell
    type where the validation set asks for it, else the tissue prompts' clinical status, else the cells'
    status), the loss only breaking ties. ``"balanced_accuracy"``: the same with cell type's balanced
    accuracy (the mean recall over the types in the validation prompts), so that a state which stops
    calling a rare type is not kept for the common types' sake (the v2 default candidate selected on
    accuracy never called B, Th or naive T cells). Why
    accuracy: the loss rises from over-confident wrong answers long before accuracy stops improving; the
    v2 benchmark rule stopped on the loss at step ~280 and lost 5-7 points of held-out accuracy
    (benchmarks/learning_curve.py)."""
    if not ev or "loss" not in ev:
        return -float("inf")
    if select_by == "loss":
        return -float(ev["loss"])
    if select_by not in SELECT_BY:
        raise ModelInputError("train settings", f"unknown select_by {select_by!r} ({', '.join(SELECT_BY)})")
    acc = ev.get("type_acc", ev.get("tissue_acc", ev.get("status_acc")))
    if select_by == "balanced_accuracy" and "type_bacc" in ev:
        acc = ev["type_bacc"]
    return (float(acc) if acc is not None else 0.0) - 1e-3 * float(ev["loss"])


def tissue_reader_score(ev: dict) -> float:
    """How well a validation result read the tissue prompts (higher is better): their accuracy, their loss
    breaking ties; -inf where none was read.

    Why a state of its own: the tissue task is learnt from a few images per stage and overfits long before
    the cell types stop improving. The v2 default candidates 8 and 9 read the validation tissues best at
    step 1,000 / 500 (accuracy 0.87 / 0.84, loss 0.45 / 0.46) and at step 4,000, still improving on cell
    types, 0.66 / 0.70 (loss 1.35 / 1.32): the state kept for the cell types reads an image's status
    from an over-fitted tissue task."""
    if not ev or "tissue_acc" not in ev:
        return -float("inf")
    return float(ev["tissue_acc"]) - 1e-3 * float(ev.get("tissue_loss", 0.0))


def evaluate(model, val_set, batch_size: int = 256) -> dict:
    """Mean answer loss and accuracy per task over a fixed validation prompt set."""
    seqs, answers, tasks, values = val_set
    lm = model.lm
    lm.eval()
    tot, res = 0.0, {}
    per = {t: [0.0, 0, 0] for t in set(tasks)}
    type_true, type_right = [], []  # per type prompt, for the balanced accuracy
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
                right = sub.argmax(-1) == y
                per[task][0] += float(-lp[torch.arange(len(y)), y].sum())
                per[task][1] += int(right.sum())
                per[task][2] += len(y)
                if task == "type":
                    type_true.append(y.cpu().numpy())
                    type_right.append(right.cpu().numpy())
    for task, (l, c, n) in per.items():
        res[f"{task}_loss"] = l / max(n, 1)
        res[f"{task}_acc"] = c / max(n, 1)
        tot += l / max(n, 1)
    res["loss"] = tot / max(len(per), 1)
    if type_true:
        y, right = np.concatenate(type_true), np.concatenate(type_right)
        seen = np.bincount(y)
        res["type_bacc"] = float(np.mean(np.bincount(y, weights=right)[seen > 0] / seen[seen > 0]))
    return res


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
    with torch_threads(ts.num_threads), torch_rng_kept():
        res = _train(tables, out, sentence, pairs, prompt, model_settings, ts, type_labels, status_labels,
                     resume, progress_bar, device, info, log)
        if not (ts.refit and "step" in res.best):
            return res
        # refit: the validation run chose the number of steps; train on every training cell for that many
        steps = int(res.best["step"])
        log(f"refit on every training cell for {steps} steps (the validation run's best step)")
        record = {"steps": steps, "validation_run": res.model.info["training"]}
        # its own checkpoint folder: resuming the whole training must find the validation run's state,
        # not the refit's (the refit then starts again from scratch)
        refit_ts = replace(ts, steps=steps, val_fraction=0.0, refit=False, checkpoint_dir=str(ckpt.parent / "refit"))
        refit = _train(tables, out, sentence, pairs, prompt, model_settings, refit_ts, type_labels,
                       status_labels, False, progress_bar, device, {**(info or {}), "refit": record}, log)
        refit.best, refit.stopped_early = res.best, res.stopped_early
        refit.seconds += res.seconds
        refit.steps_done += res.steps_done  # every optimiser step of both runs
        return refit


def _train(tables, out, sentence, pairs, prompt, model_settings, ts, type_labels, status_labels, resume,
           progress_bar, device, info, log) -> TrainResult:
    sentence, pairs = sentence or SentenceSettings(), pairs or PairSettings()
    prompt, model_settings = prompt or PromptSettings(), model_settings or ModelSettings()
    tables = [tables] if isinstance(tables, pd.DataFrame) else list(tables)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    panel, types, stats = panel_and_labels(tables, sentence, type_labels, status_labels)
    split = split_validation(tables, ts)
    norm = fit_normalizer(split, panel, sentence)
    dev = str(resolve_device(device))  # the core's one device check
    model_settings = fit_positions(model_settings, sentence, pairs, prompt, len(panel), log, len(types))
    if model_settings.attention != "causal" and model_settings.positions != "tokens" and sentence.order_is_level():
        log(f"warning: {model_settings.attention} attention reads each sentence as a bag of words (one position "
            "per line), and these sentences' words carry their level only by their order (no values); "
            "causal attention keeps it")
    model = S2SModel.create(panel, types, stats, norm, sentence, pairs, prompt, model_settings, seed=ts.seed,
                            device=dev)
    if sentence.encoding == "levels":
        add_level_words(model, sentence.n_levels, ts.seed)
    if sentence.values:
        attach_value_embedding(model.lm, ts.seed, model.model_settings.init_std)
    cs, is_val = training_cells(split, panel, norm, pairs, ts.seed)
    train_cells, val_cells = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    sampler = PromptSampler(model, cs, train_cells, ts)
    # validation prompts are what prediction reads: no jitter, never the anchor-alone view
    val_sampler = (PromptSampler(model, cs, val_cells, replace(ts, value_noise=0.0, anchor_alone=0.0))
                   if len(val_cells) else None)
    val_set = val_sampler.batch(np.random.default_rng(ts.seed + 1), ts.eval_prompts) if val_sampler else None
    ckpt = (Path(ts.checkpoint_dir) if ts.checkpoint_dir else out / "checkpoint") / "state.pt"
    run = _Run(model, ts, ckpt, log)
    if resume and ckpt.exists():
        run.restore()
    t0 = time.time()
    run.loop(sampler, val_set, progress_bar)
    seconds = time.time() - t0
    model.tissue_lm = run.tissue_reader() if prompt.tissue else None
    if model.tissue_lm is not None:
        model.number_prompts()
        log(f"tissue prompts read by the state of step {run.tissue_best['step']} (validation tissue accuracy "
            f"{run.tissue_best['tissue_acc']:.3f}; the kept state, step {run.best.get('step')}: "
            f"{run.best.get('tissue_acc', float('nan')):.3f})")
    model.info = {
        **(info or {}),
        "training": {
            "steps_done": run.step, "stopped_early": run.stopped, "seconds": round(seconds, 1),
            "best_validation": run.best if run.best_state is not None else None,
            "tissue_reader": ({k: run.tissue_best[k] for k in ("step", "tissue_acc", "tissue_loss")}
                              if model.tissue_lm is not None else None),
            "history": run.history,
            "n_train_cells": int(len(train_cells)), "n_val_cells": int(len(val_cells)),
            "n_train_images": int(len(pd.unique(cs.image[train_cells]))),
            "n_val_images": int(len(pd.unique(cs.image[val_cells]))) if len(val_cells) else 0,
            "settings": ts.to_dict(),
            "n_parameters": model.num_parameters(),
        },
    }
    model.save_pretrained(out, card=model_card(model))
    return TrainResult(model, run.history, run.best, run.stopped, run.step, seconds)


class _Run:
    """One training run's optimiser, schedule, generators and validation record: the step loop with
    evaluation, early stopping (the best state kept) and checkpoints."""
    def __init__(self, model, ts: TrainSettings, ckpt: Path, log):

        self.model, self.lm, self.ts, self.ckpt, self.log = model, model.lm, ts, ckpt, log
        self.lm.train()
        self.opt = torch.optim.AdamW(self.lm.parameters(), lr=ts.lr, weight_decay=ts.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lr_at)
        self.rng = np.random.default_rng(ts.seed)
        torch.manual_seed(ts.seed)
        self.step, self.history, self.best, self.bad, self.best_state = 0, [], {"loss": float("inf")}, 0, None
        # the state that read the validation tissues best (tissue prompts only, see tissue_reader_score)
        self.tissue_best, self.tissue_state = {}, None
        self.stopped, self.running, self.bar = False, None, None
        # the weights' moving average (TrainSettings.ema_decay): one averaged copy per floating-point tensor
        # of the state dict (tied weights, listed under two names, share one), updated in place from the
        # live tensors paired here once (load_state_dict copies into them, so the pairs stay valid)
        self.ema, self._ema_pairs = None, []
        if ts.ema_decay > 0:
            self.ema, by_tensor = {}, {}
            for k, v in self.lm.state_dict().items():
                if v.is_floating_point():
                    if v.data_ptr() not in by_tensor:
                        by_tensor[v.data_ptr()] = v.detach().clone()
                        self._ema_pairs.append((by_tensor[v.data_ptr()], v))
                    self.ema[k] = by_tensor[v.data_ptr()]

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 10% of the learning rate."""
        ts = self.ts
        if step < ts.warmup_steps:
            return (step + 1) / ts.warmup_steps
        prog = (step - ts.warmup_steps) / max(1, ts.steps - ts.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

    def restore(self) -> None:

        st = load_checkpoint(self.ckpt)
        self.lm.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        self.rng.bit_generator.state = json.loads(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        self.step, self.history, self.best, self.bad = st["step"], st["history"], st["best"], st["bad"]
        self.best_state = st["best_state"]
        if self.ema is not None and st.get("ema") is not None:
            for k, v in st["ema"].items():
                self.ema[k].copy_(v)
        self.tissue_best, self.tissue_state = st.get("tissue_best", {}), st.get("tissue_state")
        self.log(f"resumed from {self.ckpt} at step {self.step}")

    def say(self, msg: str) -> None:
        (self.bar.write if self.bar is not None else self.log)(msg)

    def loop(self, sampler, val_set, progress_bar: bool) -> None:
        ts = self.ts
        if progress_bar:
            self.bar = tqdm(total=ts.steps, initial=self.step, desc="training", unit="step")
        while self.step < ts.steps:
            self.train_step(sampler)
            last = self.step == ts.steps
            if self.step % ts.eval_every == 0 or last:
                self.observe()
                if val_set is not None:
                    self.validate(val_set)
            if self.step % ts.checkpoint_every == 0 or self.stopped or last:
                self.save_checkpoint()
            if self.stopped:
                self.say(f"early stopping at step {self.step} (best step {self.best.get('step')})")
                break
        if self.bar is not None:
            self.bar.close()
        if self.best_state is not None:
            self.lm.load_state_dict(self.best_state)
        elif self.ema is not None:  # no validation: the last average
            self.lm.load_state_dict(self.state())
        self.lm.eval()

    def tissue_reader(self):
        """A copy of the language model in the state kept for the tissue prompts, or None where that is
        the kept state itself (or no validation tissue prompt was read)."""
        if self.tissue_state is None or self.tissue_best.get("step") == self.best.get("step"):
            return None
        lm = copy.deepcopy(self.lm)
        lm.load_state_dict(self.tissue_state)
        return lm.eval()

    def train_step(self, sampler) -> None:

        self.lm.train()
        tok = self.model.tokenizer
        seqs, answers, _, values = sampler.batch(self.rng, self.ts.batch_size)
        ids, mask, labels, vals = _encode_batch(seqs, answers, tok.pad_id, tok.eos_id, self.model.device, values)
        loss, _, _ = _loss(self.lm, ids, mask, labels, vals)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.lm.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.step += 1
        with torch.no_grad():
            for avg, live in self._ema_pairs:
                avg.lerp_(live, 1.0 - self.ts.ema_decay)
        lv = loss.item()
        self.running = lv if self.running is None else 0.95 * self.running + 0.05 * lv
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.running:.3f}")

    def observe(self) -> None:
        if _STEP_OBSERVERS:
            self.lm.eval()
            with self.averaged():  # observers see what training would keep at this step
                for fn in list(_STEP_OBSERVERS):
                    fn(self.step, self.model)
            self.lm.train()

    @contextmanager
    def averaged(self):
        """Inside the block the model holds the weights' moving average (where there is one); the
        current weights, which training goes on from, come back afterwards."""
        if self.ema is None:
            yield
            return
        current = {k: v.detach().clone() for k, v in self.lm.state_dict().items()}
        self.lm.load_state_dict(self.ema, strict=False)  # copies in; entries not averaged stay as they are
        try:
            yield
        finally:
            self.lm.load_state_dict(current)

    def state(self) -> dict:
        """A copy of the weights that validation reads and training keeps: the moving average where
        there is one, else the current weights."""
        ema = self.ema or {}
        return {k: (ema[k] if k in ema else v).detach().clone() for k, v in self.lm.state_dict().items()}

    def validate(self, val_set) -> None:
        with self.averaged():
            ev = evaluate(self.model, val_set)
        ev["step"] = self.step
        ev["train_loss"] = self.running
        self.history.append(ev)
        self.say(f"step {self.step}: " + " ".join(f"{k}={v:.3f}" for k, v in ev.items() if k not in ("step",)))
        if tissue_reader_score(ev) > tissue_reader_score(self.tissue_best) + 1e-6:
            self.tissue_best = dict(ev)
            self.tissue_state = self.state()
        if selection_score(ev, self.ts.select_by) > selection_score(self.best, self.ts.select_by) + 1e-6:
            self.best, self.bad = dict(ev), 0
            self.best_state = self.state()
        else:
            self.bad += 1
            self.stopped = self.bad >= self.ts.patience

    def save_checkpoint(self) -> None:

        self.ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.lm.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    "rng": json.dumps(self.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                    "step": self.step, "history": self.history, "best": self.best, "bad": self.bad,
                    "best_state": self.best_state, "tissue_best": self.tissue_best,
                    "tissue_state": self.tissue_state, "ema": self.ema}, self.ckpt)


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
        reader = tr.get("tissue_reader")
        if reader:
            lines.append(f"- images' status read by the state of step {reader['step']} (validation tissue accuracy "
                         f"{reader['tissue_acc']:.3f}), kept apart from the cell-type state (folder tissue_reader/)")
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
