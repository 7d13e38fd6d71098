"""The overlay PNG of a batch image: cell types blended over a grey DNA/histone composite, darker cell
borders and a legend, enlarged so that small crops stay readable."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..palette import hex_to_rgba

_DNA = re.compile(r"^(dna\d*|ir19[13]|h3|histone ?h3|hoechst|dapi)$", re.IGNORECASE)


def _grey_composite(image) -> np.ndarray:
    """(Y, X) in [0, 1]: DNA / histone channels if present, else all channels; arcsinh, 99.5th pct."""
    names = [str(c) for c in image.channels]
    pick = [i for i, n in enumerate(names) if _DNA.match(n.strip())]
    pick = pick or list(range(len(names)))
    acc = np.zeros(image.shape, np.float64)
    used = 0
    for i in pick:
        ch = np.arcsinh(np.nan_to_num(np.asarray(image.data[i], np.float64), nan=0.0, posinf=0.0, neginf=0.0))
        hi = np.percentile(ch, 99.5)
        if hi > 0:
            acc += np.clip(ch / hi, 0, 1)
            used += 1
    return acc / max(used, 1)


def _overlay_font(size: int):
    """An antialiased (FreeType) font of ``size`` px: Pillow's bundled one (Pillow >= 10.1), else DejaVu
    Sans where installed, else Pillow's bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        pass
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default()


OVERLAY_MIN_SIDE = 800  # px: smaller images are enlarged (whole pixels) so cells and text are readable
OVERLAY_MAX_ZOOM = 8


def overlay_zoom(shape) -> int:
    """Whole-number enlargement of an overlay: the image's shorter side to at least
    :data:`OVERLAY_MIN_SIDE` px, at most :data:`OVERLAY_MAX_ZOOM` x (a 100 x 100 px crop: 8 x)."""
    side = max(1, min(int(shape[0]), int(shape[1])))
    return int(min(OVERLAY_MAX_ZOOM, max(1, -(-OVERLAY_MIN_SIDE // side))))


def render_overlay(image, mask: np.ndarray, type_ids: np.ndarray, type_labels: Sequence[str],
                   colors: dict[str, str], alpha: float = 0.65, warning: str | None = None):
    """RGB ``PIL.Image``: type colours blended over a grey composite, darker cell borders, and a legend
    (antialiased text). Images whose shorter side is under 800 px are enlarged by a whole factor
    (:func:`overlay_zoom`, nearest neighbour: every image pixel a square block), so a 100 px crop is not
    a 100 px thumbnail. ``warning``: a line under the legend, in red (a prediction from a partial
    panel: the picture alone must not pass for a full-panel call)."""
    zoom = overlay_zoom(mask.shape)

    def up(a):
        return np.repeat(np.repeat(a, zoom, axis=0), zoom, axis=1) if zoom > 1 else a

    grey = up(0.9 * _grey_composite(image))
    mask, type_ids = up(np.asarray(mask)), up(np.asarray(type_ids))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    lut = np.zeros((len(type_labels) + 1, 3))
    for k, t in enumerate(type_labels):
        lut[k + 1] = hex_to_rgba(colors[t])[:3]
    cell = mask > 0
    typed = type_ids > 0
    col = lut[type_ids]
    rgb[typed] = (1 - alpha) * rgb[typed] + alpha * col[typed]
    border = np.zeros(mask.shape, bool)
    border[:-1] |= mask[:-1] != mask[1:]
    border[1:] |= mask[1:] != mask[:-1]
    border[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    border[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    border &= cell
    rgb[border & typed] = 0.55 * col[border & typed]
    rgb[border & ~typed] = 0.3
    pixels = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    present = [t for k, t in enumerate(type_labels) if np.any(type_ids == k + 1)]
    if not present and not warning:
        return img
    size = int(np.clip(round(min(img.height, img.width) / 45), 14, 28))
    font = _overlay_font(size)
    row, pad, box = int(round(size * 1.5)), size // 2, size
    probe = ImageDraw.Draw(img)
    notes = _wrap(warning, font, probe, max(240, size * 14)) if warning else []
    width = pad * 3 + box + max([int(np.ceil(probe.textlength(t, font=font))) for t in present] or [0])
    width = max(width, pad * 2 + max([int(np.ceil(probe.textlength(t, font=font))) for t in notes] or [0]))
    h = max(img.height, pad * 2 + row * (len(present) + len(notes) + (1 if notes else 0)))
    canvas = Image.new("RGB", (img.width + width, h), (255, 255, 255))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, t in enumerate(present):
        y = pad + i * row
        x = img.width + pad
        draw.rectangle([x, y + (row - box) // 2, x + box, y + (row - box) // 2 + box], fill=colors[t],
                       outline=(0, 0, 0))
        draw.text((x + box + pad, y + row // 2), t, fill=(0, 0, 0), font=font, anchor="lm")
    for i, t in enumerate(notes):
        y = pad + (len(present) + 1 + i) * row
        draw.text((img.width + pad, y + row // 2), t, fill=(200, 0, 0), font=font, anchor="lm")
    return canvas


def _wrap(text: str, font, draw, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (words kept whole)."""
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if cur and draw.textlength(trial, font=font) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + ([cur] if cur else [])
