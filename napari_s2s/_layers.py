"""Layer building for napari-s2s: plain ``LayerData`` tuples and colormaps, no widgets.

Everything here is pure numpy / napari model code, so the reader, the sample data, the dock widget, the
demo and the tests share one way of turning IMC data and predictions into layers.

Layer metadata: every layer this plugin makes carries ``metadata["s2s"]``, a dict with ``role``
(``channel``, ``mask``, ``class_ids``, ``low_confidence``, ``confidence``, ``attribution``, ``partners``),
``image`` (the image name), and for channels ``channel`` (the marker) and ``index``. The widget finds the
channels of one image through it; layers made elsewhere are grouped by shape instead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spatial2sentence.aliases import canonical_marker
from spatial2sentence.palette import LOW_CONFIDENCE, UNASSIGNED, hex_to_rgba, label_colors

# additive colormaps for channels, cycled; the first ones are the most distinguishable
CHANNEL_COLORMAPS = ("green", "magenta", "cyan", "yellow", "red", "blue", "bop orange", "bop purple")
# channels shown at first (the rest are loaded but hidden, so a 37-marker panel is not a white blur)
PREFERRED_VISIBLE = ("PIN", "INS", "GCG", "H3", "DNA1", "CDH", "SST", "CD99", "KRT19", "CD45", "CD3e")
MAX_VISIBLE = 4
TRANSPARENT = (0.0, 0.0, 0.0, 0.0)
LOW_CONFIDENCE_COLOR = hex_to_rgba(LOW_CONFIDENCE)  # white: no type, channel or partner colour is
POSITIVE_COLOR = "#00e676"  # positive partner lines
NEGATIVE_COLOR = "#ff4081"  # negative partner lines
# the explained cell's ring: white on a wider black ring, so it stands out on every channel colormap
# and cell-type colour (an amber ring alone was lost on the yellow channel); two shapes, the black first
ANCHOR_COLORS = ("#000000", "#ffffff")
ANCHOR_WIDTHS = (3.2, 1.6)
ANCHOR_SHAPES = len(ANCHOR_COLORS)  # the partner lines follow the ring's shapes


def s2s_meta(role: str, image: str, **extra) -> dict:
    return {"s2s": {"role": role, "image": str(image), **extra}}


def direct_colormap(color_dict: dict):
    """napari's ``DirectLabelColormap`` of ``color_dict`` (label -> RGBA), background 0."""
    from napari.utils.colormaps import DirectLabelColormap  # lazy: 3.5 s to import, the headless demo never needs it

    return DirectLabelColormap(color_dict=color_dict, background_value=0)


def contrast_limits(channel: np.ndarray, q: float = 99.5) -> tuple[float, float]:
    """0 to the ``q``-th percentile of the finite pixels (a positive upper bound always)."""
    a = np.asarray(channel)
    if a.size > 1_000_000:  # a strided sample is enough for a percentile
        a = a.ravel()[:: int(np.ceil(a.size / 1_000_000))]
    a = a[np.isfinite(a)]
    hi = float(np.percentile(a, q)) if a.size else 1.0
    if not np.isfinite(hi) or hi <= 0:
        hi = float(a.max()) if a.size and float(a.max()) > 0 else 1.0
    return 0.0, hi


def visible_channels(channels: list[str]) -> set[int]:
    idx = [channels.index(m) for m in PREFERRED_VISIBLE if m in channels][:MAX_VISIBLE]
    return set(idx or range(min(3, len(channels))))


def channel_layers(data: np.ndarray, channels: list[str], image: str, pixel_size_um: float = 1.0,
                   translate=(0.0, 0.0), name_suffix: str = "", path: str | None = None) -> list[tuple]:
    """One image layer per channel (named by marker, additive blending, 0..p99.5 contrast)."""
    shown = visible_channels(list(channels))
    out = []
    for i, marker in enumerate(channels):
        ch = np.asarray(data[i])
        out.append((ch, {
            "name": f"{marker}{name_suffix}",
            "colormap": CHANNEL_COLORMAPS[sorted(shown).index(i) if i in shown else i % len(CHANNEL_COLORMAPS)],
            "blending": "additive",
            "contrast_limits": contrast_limits(ch),
            "visible": i in shown,
            "scale": (pixel_size_um, pixel_size_um),
            "translate": tuple(translate),
            "metadata": s2s_meta("channel", image, channel=str(marker), index=i, path=path,
                                 pixel_size_um=pixel_size_um),
        }, "image"))
    return out


def mask_layer(mask: np.ndarray, image: str, pixel_size_um: float = 1.0, translate=(0.0, 0.0),
               name: str | None = None, path: str | None = None) -> tuple:
    return (np.asarray(mask), {
        "name": name or f"{image} mask",
        "scale": (pixel_size_um, pixel_size_um),
        "translate": tuple(translate),
        "opacity": 0.6,
        "metadata": s2s_meta("mask", image, path=path, pixel_size_um=pixel_size_um),
    }, "labels")


# ------------------------------------------------------------------------------------- predictions

def type_colors(type_labels: list[str]) -> dict[str, str]:
    return label_colors(list(type_labels))


def cell_type_colormap(objects, cell_types, type_labels: list[str], opacity: float = 1.0):
    """``DirectLabelColormap``: each cell (mask label) in its predicted type's colour, background
    transparent, cells without a prediction (and labels not in the table) grey."""
    colors = {t: hex_to_rgba(c, opacity) for t, c in type_colors(type_labels).items()}
    grey = hex_to_rgba(UNASSIGNED, opacity)
    cdict = {None: grey, 0: TRANSPARENT}
    for o, t in zip(np.asarray(objects).tolist(), list(cell_types)):
        cdict[int(o)] = colors.get(t, grey) if isinstance(t, str) else grey
    return direct_colormap(cdict)


def class_id_colormap(type_labels: list[str]):
    cdict = {None: hex_to_rgba(UNASSIGNED), 0: TRANSPARENT}
    for k, c in enumerate(type_colors(type_labels).values(), start=1):
        cdict[k] = hex_to_rgba(c)
    return direct_colormap(cdict)


def mask_features(table: pd.DataFrame, type_labels: list[str]) -> pd.DataFrame:
    """Features of the mask layer: ``index`` = label value (napari's convention), the object id, the
    predicted type, its probability, every class probability and the per-cell clinical status."""
    f = pd.DataFrame({"index": table["Object"].astype(np.int64).to_numpy()})
    f["Object"] = table["Object"].to_numpy()
    f["cell_type"] = table["cell_type"].astype(object).where(table["cell_type"].notna(), "unassigned").to_numpy()
    f["cell_type_probability"] = table["cell_type_probability"].to_numpy(np.float64)
    cols = [c for c in table.columns if c.startswith("p_") and not c.startswith("p_status_")]
    cols += [c for c in ("status", "status_probability") if c in table.columns]
    cols += [c for c in table.columns if c.startswith("p_status_")]
    for c in cols:
        f[c] = table[c].to_numpy()
    return f


def counts_per_type(cell_types, type_labels: list[str]) -> list[tuple[str, int, str]]:
    """(type, count, colour) for every type of the model (0 counts kept) and an ``unassigned`` row when
    some cells have no prediction."""
    s = pd.Series(list(cell_types), dtype=object)
    colors = type_colors(type_labels)
    rows = [(t, int((s == t).sum()), colors[t]) for t in type_labels]
    n_none = int(s.isna().sum())
    if n_none:
        rows.append(("unassigned", n_none, UNASSIGNED))
    return rows


def percent_text(count: int, total: int) -> str:
    """A share for the legend: whole percent from 1% up, one decimal below (a type with 1 of 600 cells
    reads 0.2, not 0), '<0.1' for a share that would round to 0.0."""
    if total <= 0:
        return ""
    pct = 100.0 * count / total
    if pct >= 1 or count == 0:
        return f"{pct:.0f}"
    return f"{pct:.1f}" if pct >= 0.05 else "<0.1"


def low_confidence_colormap(objects, probabilities, threshold: float):
    """Only the cells whose predicted-type probability is below ``threshold`` (outlined in white)."""
    cdict = {None: TRANSPARENT, 0: TRANSPARENT}
    p = np.asarray(probabilities, dtype=float)
    for o, v in zip(np.asarray(objects).tolist(), p.tolist()):
        if not np.isfinite(v) or v < threshold:
            cdict[int(o)] = LOW_CONFIDENCE_COLOR
    return direct_colormap(cdict)


# ------------------------------------------------------------------------------------- attributions

def diverging_rgba(score: float, vmax: float) -> tuple[float, float, float, float]:
    """Blue (against the prediction) - white - red (for it), by ``score / vmax``."""
    if not np.isfinite(score):
        return hex_to_rgba(UNASSIGNED, 0.35)  # not in this cell's prompt
    if vmax <= 0:
        return (1.0, 1.0, 1.0, 1.0)
    t = float(np.clip(score / vmax, -1.0, 1.0))
    if t >= 0:
        return (1.0, 1.0 - 0.85 * t, 1.0 - 0.85 * t, 1.0)
    t = -t
    return (1.0 - 0.85 * t, 1.0 - 0.6 * t, 1.0, 1.0)


def attribution_colormap(objects, scores):
    s = np.asarray(scores, dtype=float)
    vmax = float(np.nanmax(np.abs(s))) if np.isfinite(s).any() else 0.0
    cdict = {None: TRANSPARENT, 0: TRANSPARENT}
    for o, v in zip(np.asarray(objects).tolist(), s.tolist()):
        cdict[int(o)] = diverging_rgba(v, vmax)
    return direct_colormap(cdict), vmax


def score_of(attribution: dict, what: str) -> float:
    """How much ``what`` (a marker name, or ``"partners"``) drove one cell's prediction: the marker's
    score, or the sum of its partners' scores; NaN when absent from the cell's prompt (drawn grey)."""
    if what == "partners":
        parts = attribution.get("partners", [])
        return float(sum(float(p.get("score", 0.0)) for p in parts)) if parts else float("nan")
    want = canonical_marker(what)  # the user's name (CD45) or the model's (PTPRC): the same marker
    for m in attribution.get("markers", []):
        if str(m.get("marker")) == what or canonical_marker(str(m.get("marker"))) == want:
            return float(m.get("score", 0.0))
    return float("nan")


# ------------------------------------------------------------------------------------------ partners

def partner_shapes(anchor_xy_px, partners_xy_px, roles, scores=None, radius_px: float = 8.0, slots: int = 0):
    """Shapes data for the explanation overlay: a ring around the anchor (:data:`ANCHOR_SHAPES` ellipses)
    and one line per partner (row, column order), coloured by role (positive green, negative pink);
    widths grow with the partner's attribution score when known. ``slots``: at least this many lines,
    the unused ones empty (zero length, transparent, width 0), so every click of a model writes the same
    number of shapes and the layer's shapes can be moved instead of rebuilt."""
    ax, ay = anchor_xy_px
    data = [np.array([[ay, ax], [radius_px, radius_px]]) for _ in ANCHOR_COLORS]  # ellipses: (centre, radii)
    types, colors, widths = ["ellipse"] * ANCHOR_SHAPES, list(ANCHOR_COLORS), list(ANCHOR_WIDTHS)
    s = np.abs(np.asarray(scores if scores is not None else [np.nan] * len(roles), dtype=float))
    smax = float(np.nanmax(s)) if np.isfinite(s).any() and np.nanmax(s) > 0 else 0.0
    for (px, py), role, sc in zip(partners_xy_px, roles, s):
        data.append(np.array([[ay, ax], [py, px]]))
        types.append("line")
        colors.append(POSITIVE_COLOR if role == "positive" else NEGATIVE_COLOR)
        widths.append(0.4 + (0.8 * sc / smax if smax and np.isfinite(sc) else 0.0))
    for _ in range(len(roles), slots):
        data.append(np.array([[ay, ax], [ay, ax]]))
        types.append("line")
        colors.append(TRANSPARENT)
        widths.append(0.0)
    return data, types, colors, widths
