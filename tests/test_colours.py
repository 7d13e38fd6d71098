"""Colours a user compares with a legend: the type palette, the legend's percentages, batch overlays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spatial2sentence.palette import (
    KNOWN, LOW_CONFIDENCE, UNASSIGNED, closest_pair, delta_e, label_colors, simulate_vision,
)


def default_model_types() -> list[str]:
    from spatial2sentence.model import DEFAULT_MODEL_DIR

    path = DEFAULT_MODEL_DIR / "s2s_config.json"
    if not path.exists():
        pytest.skip("the embedded default model is not installed")
    return json.loads(path.read_text())["type_labels"]


def test_delta_e_reference_values():
    """CIEDE2000 on known pairs: identical 0, black-white 100, a just-noticeable step about 1-2."""
    assert delta_e("#336699", "#336699") == 0
    assert delta_e("#000000", "#ffffff") == pytest.approx(100, abs=0.01)
    assert 0.3 < delta_e("#808080", "#828282") < 2
    assert simulate_vision(["#ff0000"], "normal") == ["#ff0000"]
    red, green = simulate_vision(["#d62728", "#2ca02c"], "deuteranopia")
    assert delta_e(red, green) < delta_e("#d62728", "#2ca02c") / 3  # red/green collapse for deuteranopes


def test_palette_of_the_default_model_is_distinct():
    """Every two cell types of the default model differ by at least 15 CIEDE2000 units (clearly different
    colours; the earlier palette: 4.4, acinar vs alpha) in normal vision, and by at least 10 for
    deuteranopes and protanopes (15 distinct colours cannot all stay far apart for them); no type is
    close to the unassigned grey or the white low-confidence outline."""
    types = default_model_types()
    colors = label_colors(types)
    assert len(set(colors.values())) == len(types)
    d, a, b = closest_pair(colors, "normal")
    assert d >= 15, (a, b, d)
    for vision in ("deuteranopia", "protanopia"):
        d, a, b = closest_pair(colors, vision)
        assert d >= 10, (vision, a, b, d)
    for t, c in colors.items():
        assert delta_e(c, UNASSIGNED) >= 15, t
        assert delta_e(c, LOW_CONFIDENCE) >= 14, t
    # the outline colour is nobody else's: no type, and no channel colormap of the plugin
    assert LOW_CONFIDENCE not in KNOWN.values()


def test_legend_percentages():
    from napari_s2s._layers import percent_text  # pure numpy, no Qt

    assert percent_text(1, 609) == "0.2" and percent_text(2, 609) == "0.3"
    assert percent_text(300, 609) == "49" and percent_text(6, 600) == "1"
    assert percent_text(1, 5000) == "<0.1" and percent_text(0, 10) == "0"


def test_batch_overlay_is_readable():
    """A 100 x 100 px crop's overlay is enlarged 8 x (each pixel a block), the legend text is antialiased
    (grey edge pixels, not a 1-bit bitmap font) and large enough to read."""
    from napari_s2s._sample_data import load_damond
    from spatial2sentence.batch import overlay_zoom, render_overlay

    image, mask = load_damond("E34")
    types = ["alpha", "beta", "acinar"]
    ids = (np.asarray(mask) % 3 + 1) * (np.asarray(mask) > 0)
    im = render_overlay(image, mask, ids, types, label_colors(types))
    assert overlay_zoom(mask.shape) == 8 and overlay_zoom((1000, 1200)) == 1
    assert im.height == 800 and im.width > 800
    legend = np.asarray(im.convert("L"))[:, 800:]
    inked = legend < 250
    rows = np.nonzero(inked.any(1))[0]
    assert rows.max() - rows.min() > 3 * 14  # three rows of text, each at least 14 px
    levels = np.unique(legend[(legend > 20) & (legend < 235)])
    assert len(levels) > 20, "text without antialiasing"
    # each image pixel is an 8 x 8 block (background pixels away from any cell: no border drawn there)
    m = np.asarray(mask)
    px = np.asarray(im)[:800, :800].reshape(100, 8, 100, 8, 3)
    free = m == 0
    free[1:-1, 1:-1] &= (m[:-2, 1:-1] == 0) & (m[2:, 1:-1] == 0) & (m[1:-1, :-2] == 0) & (m[1:-1, 2:] == 0)
    ys, xs = np.nonzero(free)
    assert len(ys) > 10
    for y, x in zip(ys[:50], xs[:50]):
        block = px[y, :, x].reshape(-1, 3)
        assert (block == block[0]).all()


def test_overlay_of_a_partial_panel_says_so(tmp_path):
    """An overlay from a partial-panel prediction carries a red line under its legend (the picture alone
    must not pass for a full-panel call)."""
    import shutil

    from napari_s2s._sample_data import load_damond
    from spatial2sentence.batch import render_overlay, run_batch
    from spatial2sentence.model import DEFAULT_MODEL_DIR
    from conftest import DAMOND_TOY

    image, mask = load_damond("E34")
    types = ["alpha", "beta", "acinar"]
    ids = (np.asarray(mask) % 3 + 1) * (np.asarray(mask) > 0)

    def red(im):
        a = np.asarray(im).astype(int)[:, 800:]
        return int(((a[..., 0] > 150) & (a[..., 1] < 60) & (a[..., 2] < 60)).sum())

    plain = render_overlay(image, mask, ids, types, label_colors(types))
    warned = render_overlay(image, mask, ids, types, label_colors(types),
                            warning="partial panel: 4 of 34 model markers; types less reliable")
    assert red(warned) > red(plain) + 50  # (the legend's swatches may be reddish themselves)
    if not (DEFAULT_MODEL_DIR / "s2s_config.json").exists():
        pytest.skip("default model not built")
    # a real batch run of a 5-marker crop with the default model (34 markers), partial panel allowed
    folder = tmp_path / "in"
    for sub in ("img", "masks"):
        (folder / sub).mkdir(parents=True)
        shutil.copy(DAMOND_TOY / sub / "E34.tiff", folder / sub / "E34.tiff")
    shutil.copy(DAMOND_TOY / "panel.csv", folder / "panel.csv")
    res = run_batch(folder, tmp_path / "out", allow_partial_panel=True, threads=1)
    assert res.ok
    from PIL import Image

    with Image.open(tmp_path / "out" / "overlays" / "E34.png") as png:
        rgb = png.convert("RGB")
    legend = np.asarray(rgb).astype(int)[:, 800:]
    text = (legend[..., 0] > 150) & (legend[..., 1] < 60) & (legend[..., 2] < 60)
    # rows with more red than a swatch is wide: the warning's text lines (looked at: two lines under the
    # legend, "partial panel: 4 of 34 model markers; types less reliable")
    assert (text.sum(1) > 40).sum() > 5
