"""The benchmark's methods and the one training budget they share.

Methods: the language models ``s2s`` (v2 Spatial2Sentence: level words carrying their values, anchor +
positive and negative partners + an ``around`` neighbourhood line, tissue prompts for the image's status,
cell type + clinical status + auxiliary pair task + tissue task), ``c2s`` (single-cell prompts, same
sentences, model and budget, no pair or tissue task, image status = the mean of its cells' calls: space
off), ``c2s_ranked`` (Cell2Sentence as published, the paper's baseline: one cell, ranked marker words
without values, read causally), the
ablations ``s2s_ranked`` (levels off: v1 ranked words, no values), ``s2s_no_values`` (level words without
values), ``s2s_no_neighbourhood`` (no ``around`` line), ``s2s_no_tissue`` (image-level status off: the
mean of the cells' calls), ``s2s_no_negatives`` (``n_neg=0``), ``s2s_no_positives`` (``n_pos=0``),
``s2s_no_aux`` (no pair task, its share of the steps goes to the other tasks), ``s2s_token_positions``
(one position id per word instead of per line, :mod:`spatial2sentence.positions`), all trained with
:func:`spatial2sentence.training.train` under one :class:`Budget` (:func:`lm_settings`); and the
classical baselines of :mod:`spatial2sentence.bench.baselines`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from ..settings import ModelSettings, PairSettings, PromptSettings, SentenceSettings, TrainSettings

LM_METHODS = ("s2s", "c2s", "c2s_ranked", "s2s_ranked", "s2s_no_values", "s2s_no_neighbourhood",
              "s2s_no_tissue", "s2s_no_negatives", "s2s_no_positives", "s2s_no_aux", "s2s_token_positions", "s2s_select")
# methods that train each candidate and keep the one with the best validation score (the budget's
# select_by, on validation cells of the training groups only): which sentence a panel needs is chosen per
# training set. Why: the value-carrying sentence added 2.5 points of cell type on the 37-marker
# semi-synthetic images and cost 10.4 on the 5-marker toy crops, where v1's ranked words tied logistic
# regression (benchmarks/results/accuracy/accuracy.md, every-ablation runs)
SELECTED_METHODS = {"s2s_select": ("s2s", "s2s_ranked")}
CLASSICAL_METHODS = ("logreg", "logreg_neighbors", "hgb_neighbors")
ALL_METHODS = LM_METHODS + CLASSICAL_METHODS + ("composition_logreg",)
TASKS = ("cell_type", "clinical_status", "clinical_status_cells")


@dataclass
class Budget:
    """The training budget: the same for every language model (our choice; printed and saved)."""

    # at most this many optimiser steps per language model and fold; early stopping on validation cells
    # from the training groups decides (v1: a fixed 800 steps, no validation, under-trained)
    steps: int = 2000
    batch_size: int = 32  # prompts per step (so steps x batch_size training prompts per model)
    lr: float = 3e-3
    warmup_steps: int = 50
    val_fraction: float = 0.2  # validation share of the training groups (never test cells)
    eval_every: int = 100  # validation every this many steps
    eval_prompts: int = 600  # fixed validation prompts
    # evaluations without a better validation score before stopping (best state kept); 8: on one CyCIF
    # fold validation accuracy still rose at step 1500 while patience 4 stopped runs at 800
    patience: int = 8
    # type sampling weight ~ count(type) ** -class_balance; 0 (plain sampling): one CyCIF fold read 67.4%
    # at 0 against 62.4% at 0.5 (same macro-F1 within noise)
    class_balance: float = 0.0
    # cell sentences of s2s / c2s / ablations: "values" (v2: bare words carrying values), "levels",
    # "ranked" (v1); s2s_ranked always uses v1 ranked words
    encoding: str = "values"
    n_levels: int = 16
    level_bins: str = "equal"
    # range value a marker must exceed to enter a sentence (SentenceSettings.level_threshold; below 0:
    # every marker of the panel)
    level_threshold: float = 0.05
    partner_words: int = 3  # partner lines keep their 3 highest words (the anchor all; see SentenceSettings)
    values: bool = True  # marker words carry their measured value into the embedding (spatial2sentence.numeric)
    select_by: str = "accuracy"  # early stopping and the kept state: validation accuracy of the main task
    neighbourhood_k: int = 10  # s2s prompts end with an "around" line: the mean of the 10 nearest cells
    neighbourhood_words: int = 6  # ... its 6 highest markers (phenotypes)
    tissue: bool = True  # s2s reads an image's clinical status from tissue prompts (spatial2sentence.tissue)
    # tissue prompts also carry the image's cell-type composition (PromptSettings.tissue_types)
    tissue_types: bool = False
    # position ids per line of the prompt, not per word (spatial2sentence.positions): on one CyCIF strip
    # held-out accuracy rose from 62.9 to 69.9 (c2s) and 64.9 to 68.5 (s2s) against one per word
    positions: str = "lines"
    # chance that a type/status prompt of s2s shows the anchor alone (TrainSettings.anchor_alone): CyCIF
    # (3 seeds) s2s 70.7 at 0 -> 72.5 at 0.3; with the anchor's line also numbered last 71.5
    anchor_alone: float = 0.3
    # train again on every training cell for the validation run's best step count (TrainSettings.refit)
    refit: bool = False
    # moving average of the weights (TrainSettings.ema_decay; 0: off) and the fresh weights' sd
    # (ModelSettings.init_std; Hugging Face's 0.02 before). CyCIF, 3 seeds x 4 strips
    # (benchmarks/results/cycif_init/README.md): s2s 72.4 (macro-F1 31.4) -> 74.1 (38.9) with sd 0.1,
    # 73.4 (31.4) with the average, 75.3 (39.4) with both; c2s 74.2 (34.6) -> 76.3 (40.5) with both
    ema_decay: float = 0.99
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    init_std: float = 0.1  # initial weights' standard deviation (ModelSettings.init_std; see ema_decay)
    # ModelSettings.attention for every language model. CyCIF, 3 seeds x 4 strips
    # (benchmarks/results/cycif_v2/README.md): causal s2s 75.3 / c2s 76.3; "prefix" (the prompt's
    # sentences both ways) 75.4 / 79.7; "sentence" (each line's words both ways, earlier lines causally)
    # 78.1 / 79.7 (for c2s the same mask); logistic regression 77.7. Sentences whose words carry no level
    # (s2s_ranked; SentenceSettings.order_is_level) stay causal: a line read both ways with one position id
    # is a bag of words, and their order is their level (toy crops, 3 seeds: s2s_ranked 86.1 causal, 72.7
    # with sentence attention; benchmarks/results/toy_sentence/README.md)
    attention: str = "sentence"
    weight_decay: float = 0.01  # AdamW's (TrainSettings.weight_decay)
    # gaussian noise (sd, range scale) on the values marker words carry, per training prompt
    # (TrainSettings.value_noise; validation and test prompts never see it)
    value_noise: float = 0.0
    threads: int = 1  # torch CPU threads (1: several threads thrash on a shared 2-core machine)
    max_train_cells: int = 40000  # training images are sampled (seeded, round-robin over donors) up to this
    classical_max_train: int = 20000  # classical methods fit on at most this many of those cells
    k_neighbors: int = 10  # neighbourhood size of the *_neighbors baselines
    test_cells_per_image: int | None = None  # None: the dataset's default (all; 50 for the large built-ins); 0: all
    seeds: int = 3
    workers: int = 2  # processes running folds in parallel (each with `threads` torch threads)

    def to_dict(self) -> dict:
        return asdict(self)


def lm_settings(method: str, budget: Budget, seed: int):
    """The settings one language-model method trains with: (sentence, pairs, prompt, model, training)."""
    pairs = PairSettings(seed=seed)
    mix = {"type": 0.6, "status": 0.3, "pair": 0.1}
    prompt = PromptSettings(format="multi", neighbourhood_k=budget.neighbourhood_k,
                            neighbourhood_words=budget.neighbourhood_words, tissue=budget.tissue,
                            tissue_types=budget.tissue_types)
    if method == "s2s_no_neighbourhood":
        prompt.neighbourhood_k = 0
    elif method == "s2s_no_tissue":
        prompt.tissue = False
    if method in ("c2s", "c2s_ranked"):  # one cell, no space, image status = the mean of its cells' calls
        prompt = PromptSettings(format="single")
        mix.pop("pair")
    elif method == "s2s_no_negatives":
        pairs.n_neg = 0
    elif method == "s2s_no_positives":
        pairs.n_pos = 0
    elif method == "s2s_no_aux":
        mix.pop("pair")
    elif method not in ("s2s", "s2s_ranked", "s2s_no_values", "s2s_no_neighbourhood", "s2s_no_tissue",
                        "s2s_token_positions"):
        raise ValueError(method)
    if prompt.tissue:  # a fifth of the prompts are tissue prompts (dropped where no image has a status)
        mix = {"type": 0.5, "status": 0.15, "pair": 0.15, "tissue": 0.2} if "pair" in mix else \
            {"type": 0.55, "status": 0.2, "tissue": 0.25}
    # c2s_ranked: Cell2Sentence's kind of sentence (the paper's baseline), the v1 ranked words
    sentence = bench_sentence(budget, ranked=method in ("s2s_ranked", "c2s_ranked"))
    if method in ("s2s_no_values", "s2s_ranked", "c2s_ranked"):
        sentence.values = False
    # max_positions is raised by training when the longest prompt needs more (levels sentences)
    ms = ModelSettings(architecture="llama", hidden_size=budget.hidden_size, num_layers=budget.num_layers,
                       num_heads=budget.num_heads, intermediate_size=budget.intermediate_size, max_positions=160,
                       positions="tokens" if method == "s2s_token_positions" else budget.positions,
                       init_std=budget.init_std, attention=lm_attention(budget, sentence))
    ts = TrainSettings(seed=seed, steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr,
                       warmup_steps=budget.warmup_steps, task_mix=mix, class_balance=budget.class_balance,
                       panel_subset_prob=0.0, val_fraction=budget.val_fraction, eval_every=budget.eval_every,
                       eval_prompts=budget.eval_prompts, checkpoint_every=10 ** 9, patience=budget.patience,
                       num_threads=budget.threads, select_by=budget.select_by,
                       anchor_alone=budget.anchor_alone, refit=budget.refit, ema_decay=budget.ema_decay,
                       weight_decay=budget.weight_decay, value_noise=budget.value_noise)
    return sentence, pairs, prompt, ms, ts


def lm_attention(budget: Budget, sentence: SentenceSettings) -> str:
    """The attention of a language model reading ``sentence``: the budget's, causal where the words' order
    is their only level (see ``Budget.attention``)."""
    return "causal" if sentence.order_is_level() else budget.attention


def bench_sentence(budget: Budget, ranked: bool = False) -> SentenceSettings:
    """The sentences of the benchmark's language models: ``budget.encoding`` (``s2s_ranked``: the v1 ranked
    sentences, top 12 above 0.3 by range, the levels-off ablation)."""
    if ranked or budget.encoding == "ranked":
        return SentenceSettings()
    return SentenceSettings(encoding=budget.encoding, n_levels=budget.n_levels, level_bins=budget.level_bins,
                            partner_words=budget.partner_words, values=budget.values,
                            level_threshold=budget.level_threshold)


def val_rule(train_df: pd.DataFrame) -> str:
    """The validation split of one LM training, the same rule for every language model: whole images when
    the training groups hold at least 5 images, else a spatial block of each image (the right-most
    ``val_fraction`` of its cells: the toy crops have 2 training images, the CyCIF fold 3 strips)."""
    return "images" if train_df["image"].nunique() >= 5 else "blocks"


def sentence_words(budget: Budget | None = None) -> str:
    """The sentences of a budget in words, for the reports."""
    st = bench_sentence(budget or Budget())
    if st.encoding == "levels":
        return (f"every marker above {st.level_threshold} (range scale) as one word MARKER:L, L = 1..{st.n_levels} "
                f"from per-marker {st.level_bins} bins of the training cells, partner lines their "
                f"{st.partner_words or 'all'} highest words; s2s_ranked: v1 ranked words (top 12 above 0.3)")
    if st.encoding == "values":
        b = budget or Budget()
        return (f"every marker above {st.level_threshold} (range scale), highest first, each word carrying its "
                f"value; partner lines their {st.partner_words or 'all'} highest words"
                + (f"; an 'around' line (the {b.neighbourhood_k} nearest cells' mean, {b.neighbourhood_words} "
                   "words)" if b.neighbourhood_k else "")
                + ("; image status from tissue prompts" + (" carrying the cell-type composition (the model's own "
                   "calls at test)" if b.tissue_types else "") + ", read by the state with the best validation "
                   "tissue accuracy" if b.tissue else "")
                + "; s2s_ranked: v1 ranked words (top 12 above 0.3), no values")
    return f"markers ranked by {st.rank_by}, top {st.top_k} above {st.threshold}"
