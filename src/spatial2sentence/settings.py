"""All settings of sentences, pairs, prompts, model and training, as plain dataclasses.

Each is stored in the model directory (``s2s_config.json``) so a saved model rebuilds exactly the prompts
it was trained on. Every value here is *our* choice (the paper's code and settings are not available);
the defaults are documented next to each field.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields

from .errors import S2SInputError


class UnknownSettingsWarning(UserWarning):
    """A stored model names settings this version does not know (it was saved by a newer version)."""


class _Base:
    @classmethod
    def from_dict(cls, d: dict | None, strict: bool = False):
        """The settings in ``d``. Keys this version does not know are ignored with a warning, so that a
        model saved by a newer version stays readable; ``strict`` (a training config a person wrote)
        refuses them instead, since there they are typing mistakes."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown and strict:
            raise S2SInputError(cls.__name__, f"unknown settings {unknown}")
        if unknown:
            warnings.warn(f"{cls.__name__}: settings {unknown} are unknown to this version of spatial2sentence "
                          "and are ignored (the model was saved by a newer version?)", UnknownSettingsWarning,
                          stacklevel=2)
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SentenceSettings(_Base):
    """A cell sentence: its markers ranked by scaled expression (highest first), as bare marker words
    (``encoding="ranked"``) or as marker words with a level (``encoding="levels"``)."""

    @classmethod
    def from_dict(cls, d: dict | None, strict: bool = False):
        # configs stored before the encoding existed were ranked (the shipped v1 model): keep them so
        return super().from_dict({"encoding": "ranked", **dict(d or {})}, strict)

    def words_per_sentence(self, n_markers: int) -> int:
        """The most words one cell's sentence can have with a panel of ``n_markers``."""
        return max(1, n_markers if self.encoding in ("levels", "values") else min(self.top_k, n_markers))

    def order_is_level(self) -> bool:
        """Whether a word's place in the sentence is all that says how high its marker is: bare words
        without values ("ranked", or "values" with ``values`` off). Read both ways within a line that shares
        one position id, such a sentence is a bag of words (see ``ModelSettings.attention``)."""
        return self.encoding != "levels" and not self.values

    def words_per_partner(self, n_markers: int) -> int:
        """The most words one partner line's sentence can have."""
        w = self.words_per_sentence(n_markers)
        return min(w, self.partner_words) if self.partner_words > 0 else w

    cofactor: float = 1.0  # arcsinh(x / cofactor); 1 suits IMC counts
    scaling: str = "model"  # "model": training statistics, "image": re-estimated per image
    top_k: int = 12  # at most this many markers per sentence
    # keep only markers whose ranking value exceeds this; 0.3 (range) keeps the simulated panel's cell-type
    # information and lifts small real panels (benchmarks/sentence_encoding.py)
    threshold: float = 0.3
    # ranking value: "range" (position of z between the marker's 1st and 99th training percentiles, 0-1)
    # or "z" (robust z, centred on the median training cell); see spatial2sentence.normalize
    rank_by: str = "range"
    # safeguard for data on another intensity scale (other instrument or preprocessing): when, in one
    # image, the median over markers of |median z| exceeds this, that image is rescaled on itself
    # (with a warning); 0 disables
    rescale_offset_z: float = 3.0
    # "ranked": bare marker words, top_k above threshold (v1; every stored model without this key);
    # "values" (v2): every marker above level_threshold, bare words, each carrying its value (values=True);
    # "levels": every marker above level_threshold as one word MARKER:L (level 1..n_levels, n = highest),
    # from per-marker bins learned on the training cells (spatial2sentence.sentences, .normalize)
    encoding: str = "ranked"
    # level bins per marker ("levels" encoding): "equal" (even bins of [level_threshold, 1] on the marker's
    # training range) or "quantile" (of the training cells above level_threshold). A linear read-out of
    # the words, points against the full marker vector (semi-synthetic / toy crops / CyCIF,
    # benchmarks/sentence_encoding.py): 16 equal -1.4 / -5.3 / -2.1, 8 equal -1.1 / -6.4 / -5.0,
    # 8 quantile -3.3 / -13.2 / -6.5
    n_levels: int = 16
    level_bins: str = "equal"
    level_threshold: float = 0.05  # range value a marker must exceed to enter a "levels" or "values" sentence
    # partner lines keep at most this many words (their highest markers; 0: all). Why: levels sentences of
    # a 33-marker panel with 3 full partner lines make prompts of up to ~170 tokens, and the training time of
    # s2s grows with them; the anchor always keeps its whole sentence
    partner_words: int = 0
    # carry each marker word's measured value into its input embedding (spatial2sentence.numeric):
    # E[word] + value * V[word]; stored models without this key read words only
    values: bool = False


@dataclass
class PairSettings(_Base):
    """Partners of an anchor cell, found from KD-tree neighbourhoods (never an n x n matrix)."""

    n_pos: int = 2  # positive partners: spatially adjacent AND expression-similar
    n_neg: int = 1  # negative partners: distant AND dissimilar
    pos_radius_um: float = 30.0  # positives lie within this distance
    pos_k: int = 10  # nearest neighbours examined for positives
    pos_sim_quantile: float = 0.5  # positive needs cosine >= this quantile of neighbour-pair cosines
    neg_min_dist_um: float = 80.0  # negatives lie at least this far (relaxed to 2 x pos_radius if none)
    neg_sim_quantile: float = 0.25  # negative needs cosine <= this quantile of random-pair cosines
    neg_candidates: int = 16  # random candidates drawn per anchor and round
    neg_rounds: int = 3
    seed: int = 0


@dataclass
class PromptSettings(_Base):
    """How prompts are written."""

    format: str = "multi"  # "multi": anchor + partners (Spatial2Sentence); "single": one cell (Cell2Sentence)
    # v2: an "around" line after the partners with the mean of the anchor's k nearest cells (0: none),
    # keeping its highest neighbourhood_words markers
    neighbourhood_k: int = 0
    neighbourhood_words: int = 8
    # v2: the image's clinical status from a tissue prompt (spatial2sentence.tissue) rather than the mean
    # of its cells' calls; trained as task "tissue"
    tissue: bool = False
    # tissue prompts of marker-measured images also carry the image's cell-type composition (known types in
    # training, the model's own type calls at prediction; spatial2sentence.tissue)
    tissue_types: bool = False
    distance_bins_um: tuple = (5, 10, 15, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480)


@dataclass
class ModelSettings(_Base):
    """The causal LM. ``base_model``: a local Hugging Face causal-LM directory to start from (its
    embeddings are resized to our word-level vocabulary); empty: a fresh model of ``architecture``."""

    architecture: str = "llama"  # "llama" or "gpt2"
    hidden_size: int = 160
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 128
    base_model: str = ""
    # "lines" (v2, new models): one position id per line of the prompt, the words of a sentence sharing
    # it (spatial2sentence.positions; CyCIF benchmark: s2s 69.1 -> 70.7, c2s 69.8 -> 74.2); "tokens": one
    # per word (v1, and every stored model without this key)
    positions: str = "lines"
    # standard deviation of the fresh model's initial weights (Hugging Face's initializer_range; the value
    # embedding of spatial2sentence.numeric is drawn with the same). 0.02 is Hugging Face's default, tuned
    # for wide models; a 64-wide model starts with nearly equal embeddings (a probe of a plain transformer
    # on one CyCIF strip: 0.708 with 0.02, 0.764 with PyTorch's default of 1; benchmarks/probes/results.md)
    init_std: float = 0.02
    # "causal": every word sees only the words before it (every stored model without this key); "prefix":
    # the prompt's sentences attend to each other both ways, the task words and answer causally;
    # "sentence": the words of each sentence (line) both ways, earlier lines causally
    # (spatial2sentence.positions.attention_mask); Llama models only. With one position per line, a sentence
    # read both ways is a bag of words: keep "causal" for sentences whose order is their level
    # (SentenceSettings.order_is_level; training warns)
    attention: str = "causal"


@dataclass
class TrainSettings(_Base):
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    task_mix: dict = field(default_factory=lambda: {"type": 0.6, "status": 0.3, "pair": 0.1})
    class_balance: float = 0.5  # sampling weight of a cell ~ count(type) ** -class_balance
    # the same for type prompts that see a panel subset (None: class_balance). With a few markers the
    # prior decides between types the markers cannot tell apart (alpha against delta or gamma cells without
    # GCG): candidates trained at 0.6-0.75 recalled 0.58-0.01 of the real toy crops' alpha cells against
    # 0.82-0.89 at 0.5, while at 0.5 the full panel lost the naive T cells (benchmarks/results/
    # default_model_v2/README.md)
    subset_class_balance: float | None = None
    panel_subset_prob: float = 0.5  # chance that a prompt sees only a random subset of the panel
    panel_subset_min: int = 3  # smallest random subset (sizes drawn log-uniformly)
    # gaussian noise (sd, range scale) added to the values marker words carry, per training prompt: a
    # regulariser against memorising exact values (validation prompts are never jittered)
    value_noise: float = 0.0
    val_fraction: float = 0.15  # images held out for validation (split by image)
    # "images": val_fraction of the images; "blocks": the right-most val_fraction of every image's cells
    # (for training sets of a few images, see spatial2sentence.training_data.split_blocks)
    val_split: str = "images"
    eval_every: int = 200
    eval_prompts: int = 1500
    patience: int = 5  # evaluations without improvement before early stopping
    # what "improvement" means: "loss" (validation answer loss, v1), "accuracy" (of the main task, the
    # loss breaking ties) or "balanced_accuracy" (cell type's mean recall over types; see
    # spatial2sentence.training.selection_score)
    select_by: str = "loss"
    checkpoint_every: int = 200
    checkpoint_dir: str = ""  # where resumable state goes (empty: <out>/checkpoint)
    num_threads: int = 0  # torch threads on CPU (0: torch's default)
    # chance that a type training prompt shows the anchor alone (no partner lines, no around line: the
    # Cell2Sentence view of the same cell), an auxiliary view so that the context never has to carry what
    # the cell's own words say (prediction still reads the full prompt); status prompts never (a cell's
    # own status is the image's, which one cell cannot tell; spatial2sentence.training_data)
    anchor_alone: float = 0.0
    # after validation picked the best step, train again from the same seed on every training cell
    # (validation cells included, the normaliser refitted on them) for that many steps, the schedule
    # annealed over them; the validation run's record is kept in the model's info
    refit: bool = False
    # exponential moving average of the weights (0: off): validation, the kept state and the saved model
    # use the average, updated after every step with this decay (0.99: about the last 100 steps). Why: with
    # a few thousand training cells one state's answers move by points from step to step; the average
    # of the recent states is a cheap ensemble of them
    ema_decay: float = 0.0
