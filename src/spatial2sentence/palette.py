"""Colours of cell types, shared by the plugin, overlays and AnnData exports.

Known Damond 2019 types get fixed colours chosen so that related types look related (islet endocrine
types warm, immune types blue/purple, exocrine and stroma earthy); any other label gets a colour from a
fixed qualitative cycle, by its position in the model's label list, so colours are stable across runs.
"""

from __future__ import annotations

from typing import Sequence

UNASSIGNED = "#808080"  # cells without a prediction (e.g. too few markers)

KNOWN = {
    "beta": "#e63946",
    "alpha": "#2a9d8f",
    "delta": "#f4a261",
    "gamma": "#e9c46a",
    "acinar": "#a8dadc",
    "ductal": "#457b9d",
    "endothelial": "#ff70a6",
    "stromal": "#8d6e63",
    "Tc": "#3a0ca3",
    "Th": "#4361ee",
    "naiveTc": "#4cc9f0",
    "B": "#7209b7",
    "macrophage": "#06d6a0",
    "neutrophil": "#ffd166",
    "otherimmune": "#b5179e",
    "unknown": "#bdbdbd",
    "other": "#bdbdbd",
    "Non-diabetic": "#2a9d8f",
    "Onset": "#f4a261",
    "Long-duration": "#e63946",
}

_CYCLE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79",
]


def label_colors(labels: Sequence[str]) -> dict[str, str]:
    """Hex colour of each label: fixed for known Damond types, else from a stable cycle."""
    return {label: KNOWN.get(label, _CYCLE[i % len(_CYCLE)]) for i, label in enumerate(labels)}


def hex_to_rgba(color: str, alpha: float = 1.0) -> tuple[float, float, float, float]:
    color = color.lstrip("#")
    return tuple(int(color[i : i + 2], 16) / 255 for i in (0, 2, 4)) + (alpha,)
