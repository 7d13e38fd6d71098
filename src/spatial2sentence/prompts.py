"""Multi-sentence prompts (Spatial2Sentence) and single-cell prompts (Cell2Sentence kind).

A multi-sentence prompt, as words (one token each)::

    [BOS] cell : PIN CDH1 H3 ; near <10um north-east : PIN H3 ; near <15um south : PIN CDH1 ;
          far <240um west : CD99 ; task type answer T:beta [EOS]

* ``cell : ...`` the anchor's sentence; ``near`` lines: positive partners (adjacent and similar), ``far``
  lines: negative partners (distant and dissimilar), each with its distance (binned, in um) and its
  direction from the anchor (compass words; north = up in the image, i.e. decreasing y).
* ``task type`` asks for the anchor's cell type, ``task status`` for the clinical status of its image.
* The auxiliary pair task shows the anchor and ONE partner without position and asks whether they form a
  similar (positive) or dissimilar (negative) pair: ``... ; partner : ... ; task pair answer similar``.
* ``around : ...`` (v2, ``PromptSettings.neighbourhood_k`` > 0): what the anchor's ``k`` nearest cells
  express on average (their highest markers, each carrying the mean value), after the partner lines.
* ``format="single"``: ``[BOS] cell : ... ; task type answer ...`` (no spatial context).
* Tissue prompts (``[BOS] tissue : ... ; task status answer``) ask for an image's clinical status from
  the whole tissue: :mod:`spatial2sentence.tissue`.

Training puts the loss on the answer token only; prediction reads the logits at the ``answer`` position.
"""

from __future__ import annotations

import math

import numpy as np

BOS, EOS, PAD, UNK = "[BOS]", "[EOS]", "[PAD]", "[UNK]"
SPECIALS = [PAD, UNK, BOS, EOS]
TASKS = ("type", "status", "pair")
PAIR_ANSWERS = ("similar", "dissimilar")
DIRECTIONS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
# "around" (neighbourhood line) and "tissue" (tissue prompts, spatial2sentence.tissue) came with v2;
# they are last so that v1 vocabularies keep their ids
TEMPLATE = ["cell", ":", ";", "near", "far", "partner", "task", "answer", "here", *TASKS, *PAIR_ANSWERS,
            "around", "tissue"]


def distance_words(bins) -> list[str]:
    return [f"<{b}um" for b in bins] + [f">{bins[-1]}um"]


def distance_word(d: float, bins) -> str:
    i = int(np.searchsorted(np.asarray(bins, float), d, side="right"))
    return f"<{bins[i]}um" if i < len(bins) else f">{bins[-1]}um"


def direction_word(dx: float, dy: float) -> str:
    """Compass word of the vector (dx, dy) in image coordinates (y grows downwards: north = up)."""
    if dx == 0 and dy == 0:
        return "here"
    ang = math.degrees(math.atan2(-dy, dx)) % 360.0
    return DIRECTIONS[int(((ang + 22.5) % 360.0) // 45.0)]


def partner_words(role: str, dist: float, dx: float, dy: float, sentence: list[str], bins) -> list[str]:
    return [role, distance_word(dist, bins), direction_word(dx, dy), ":", *sentence, ";"]


def context_words(anchor: list[str], partners: list[list[str]] = ()) -> list[str]:
    """``[BOS] cell : <anchor> ; <partner lines...>`` (partner lines from :func:`partner_words`)."""
    out = [BOS, "cell", ":", *anchor, ";"]
    for p in partners:
        out.extend(p)
    return out


def task_words(task: str) -> list[str]:
    return ["task", task, "answer"]


def pair_prompt(anchor: list[str], partner: list[str]) -> list[str]:
    return [BOS, "cell", ":", *anchor, ";", "partner", ":", *partner, ";", *task_words("pair")]
