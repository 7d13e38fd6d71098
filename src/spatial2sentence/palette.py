"""Colours of cell types, shared by the plugin, overlays and AnnData exports.

Known Damond 2019 types get fixed colours chosen so that related types look related (islet endocrine
types warm, immune types blue/purple, exocrine and stroma earthy); any other label gets a colour from a
fixed qualitative cycle, by its position in the model's label list, so colours are stable across runs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab

UNASSIGNED = "#808080"  # cells without a prediction (e.g. too few markers)
LOW_CONFIDENCE = "#ffffff"  # outline of low-confidence cells: no type, channel or partner colour is white

# The 15 Damond cell types: chosen by a max-min search over sRGB (``docs/palette.md``) for the
# largest smallest CIEDE2000 difference between any two of them, and to grey (unassigned), light grey
# (unknown), white (the low-confidence outline), black and the dark canvas, in normal vision and in
# simulated deuteranopia and protanopia; then matched to the earlier hues (beta red, alpha green,
# immune types blue/purple). Smallest difference between two types: 18.9 in normal vision, 10.6 / 11.0
# deuteranopia / protanopia (before: 4.4, acinar and alpha near-identical teals; 2.0 / 4.2).
KNOWN = {
    "beta": "#c32d00",
    "alpha": "#00785a",
    "delta": "#d28700",
    "gamma": "#d2c378",
    "acinar": "#00f0ff",
    "ductal": "#2da5b4",
    "endothelial": "#f05a96",
    "stromal": "#d28778",
    "Tc": "#964b87",
    "Th": "#7878ff",
    "naiveTc": "#69b4ff",
    "B": "#870fff",
    "macrophage": "#b4f0c3",
    "neutrophil": "#78ff00",
    "otherimmune": "#c31e4b",
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


# ----------------------------------------------------------------------------------- distinctness

# Machado, Oliveira & Fernandes 2009, severity 1.0: linear-RGB matrices simulating dichromacy.
_CVD = {
    "deuteranopia": ((0.367322, 0.860646, -0.227968), (0.280085, 0.672501, 0.047413),
                     (-0.011820, 0.042940, 0.968881)),
    "protanopia": ((0.152286, 1.052583, -0.204868), (0.114503, 0.786281, 0.099216),
                   (-0.003882, -0.048116, 1.051998)),
}


def simulate_vision(colors: Sequence[str], vision: str = "normal") -> list[str]:
    """The colours as seen with ``vision``: ``normal``, ``deuteranopia`` or ``protanopia``."""
    rgb = np.array([hex_to_rgba(c)[:3] for c in colors], dtype=float)
    if vision != "normal":
        lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
        lin = np.clip(lin @ np.array(_CVD[vision]).T, 0, 1)
        rgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return ["#%02x%02x%02x" % tuple(int(round(v * 255)) for v in c) for c in np.clip(rgb, 0, 1)]


def delta_e(a: str, b: str) -> float:
    """CIEDE2000 colour difference of two hex colours (about 2: just noticeable; above 10: clearly
    different colours)."""
    lab = rgb2lab(np.array([[hex_to_rgba(a)[:3], hex_to_rgba(b)[:3]]]))[0]
    return float(deltaE_ciede2000(lab[0], lab[1]))


def closest_pair(colors: dict[str, str], vision: str = "normal") -> tuple[float, str, str]:
    """(smallest CIEDE2000 difference, label, label) over every pair of labels with different colours."""
    labels = list(colors)
    seen = dict(zip(labels, simulate_vision([colors[k] for k in labels], vision)))
    best = (float("inf"), "", "")
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if colors[a] != colors[b]:
                best = min(best, (delta_e(seen[a], seen[b]), a, b))
    return best
