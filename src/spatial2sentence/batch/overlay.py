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
                   colors: dict[str, str], alpha: float = 0.65):
    """RGB ``PIL.Image``: type colours blended over a grey composite, darker cell borders, and a legend
    (antialiased text). Images whose shorter side is under 800 px are enlarged by a whole factor
    (:func:`overlay_zoom`, nearest neighbour: every image pixel a square block), so a 100 px crop is not
    a 100 px thumbnail."""
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
    if not present:
        return img
    size = int(np.clip(round(min(img.height, img.width) / 45), 14, 28))
    font = _overlay_font(size)
    row, pad, box = int(round(size * 1.5)), size // 2, size
    probe = ImageDraw.Draw(img)
    width = pad * 3 + box + max(int(np.ceil(probe.textlength(t, font=font))) for t in present)
    h = max(img.height, pad * 2 + row * len(present))
    canvas = Image.new("RGB", (img.width + width, h), (255, 255, 255))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, t in enumerate(present):
        y = pad + i * row
        x = img.width + pad
        draw.rectangle([x, y + (row - box) // 2, x + box, y + (row - box) // 2 + box], fill=colors[t],
                       outline=(0, 0, 0))
        draw.text((x + box + pad, y + row // 2), t, fill=(0, 0, 0), font=font, anchor="lm")
    return canvas


_COMPLETED_HERE = 0  # images this process annotated (for the testing hook)


def annotate_image(job: ImageJob, out_dir: str, model: str | None = None, device: str = "auto",
                   dtype: str = "auto", batch_size: int | None = None, overwrite: bool = False,
                   fingerprint: str | None = None, should_stop: Callable[[], bool] | None = None,
                   torch_threads: int | None = None, allow_partial_panel: bool = False) -> dict:
    """Annotate one image and write its four outputs; never raises for a bad input.

    ``torch_threads``: batches scored at once (1 in Dask workers, which run one image per worker
    process; default: every available core). Each batch runs on one torch thread, so the outputs are the same
    bytes whatever this is (:mod:`spatial2sentence.threads`); torch's own setting is not changed.

    Returns a record: ``image``, ``state`` (``done``, ``skipped``, ``error`` or ``cancelled``),
    ``cells``, ``status``, ``status_probability``, ``file`` and ``reason`` (errors), ``seconds``.
    """
    global _COMPLETED_HERE
    base = {"image": job.name, "source": job.source, "file": None, "reason": None}
    if not overwrite:
        rec = read_done(out_dir, job.name, fingerprint)
        if rec is not None:
            return {**base, "state": "skipped", "cells": rec["cells"], "status": rec.get("status"),
                    "status_probability": rec.get("status_probability"), "seconds": 0.0}
    t0 = time.perf_counter()
    try:
        if job.problem:
            raise S2SInputError(job.source, job.problem)
        rec = _annotate(job, out_dir, model, device, dtype, batch_size, fingerprint, should_stop, t0,
                        torch_threads, allow_partial_panel)
    except BatchCancelled:
        return {**base, "state": "cancelled", "cells": None, "status": None, "status_probability": None,
                "seconds": time.perf_counter() - t0}
    except S2SInputError as err:
        return {**base, "state": "error", "file": err.source or job.source, "reason": err.problem,
                "cells": None, "status": None, "status_probability": None,
                "seconds": time.perf_counter() - t0}
    except Exception as err:  # a bug or an unforeseen file problem must not stop the run
        tb = traceback.extract_tb(err.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        return {**base, "state": "error", "file": job.source,
                "reason": f"unexpected {type(err).__name__}: {first_line(err)}{where}",
                "cells": None, "status": None, "status_probability": None,
                "seconds": time.perf_counter() - t0}
    _COMPLETED_HERE += 1
    return {**base, "state": "done", "cells": rec["cells"], "status": rec["status"],
            "status_probability": rec["status_probability"], "seconds": rec["seconds"]["total"]}


def _annotate(job, out_dir, model, device, dtype, batch_size, fingerprint, should_stop, t0, threads,
              allow_partial_panel=False) -> dict:
    from .io import atomic_path, read_image, read_mask, write_csv_atomic, write_json_atomic, write_tiff_atomic
    from .measure import measure_cells
    from .palette import label_colors

    if job.acquisition is not None:
        image = _read_mcd_acquisition(job.image_path, job.acquisition, job.name, job.panel_path)
    else:
        image = read_image(job.image_path, panel=job.panel_path)
    if job.mask_path is None:
        raise MaskError(job.source, "no mask")
    mask = read_mask(job.mask_path, shape=image.shape, image_path=job.image_path)
    t_read = time.perf_counter()
    caught_all = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cells = measure_cells(image, mask)
        t_measure = time.perf_counter()
        m = get_model(model, device, dtype)
        t_model = time.perf_counter()

        def progress(done, total):
            return not (should_stop is not None and should_stop())

        pred = m.predict_cells(cells, markers=image.channels, image=job.name, batch_size=batch_size,
                               progress=progress, source=job.name, threads=threads,
                               allow_partial_panel=allow_partial_panel)
        caught_all = [str(w.message) for w in caught]
    if pred.cancelled:
        raise BatchCancelled()
    t_pred = time.perf_counter()
    p = pred.cells.reset_index(drop=True)
    if not np.array_equal(p["Object"].to_numpy(), cells["Object"].to_numpy()):
        p = p.set_index("Object").loc[cells["Object"].to_numpy()].reset_index()
    table = pd.concat([cells.reset_index(drop=True), p.drop(columns=["image", "Object"])], axis=1)
    types = type_id_mask(mask, table["Object"].to_numpy(), table["cell_type"].tolist(), m.type_labels)
    overlay = render_overlay(image, mask, types, m.type_labels, label_colors(m.type_labels))

    paths = output_paths(out_dir, job.name)
    for p_ in paths.values():
        p_.parent.mkdir(parents=True, exist_ok=True)
    paths["done"].unlink(missing_ok=True)  # (overwrite) never a done marker over a half-replaced set
    write_csv_atomic(table, paths["cells"])
    if os.environ.get("S2S_BATCH_STALL_AFTER"):
        _stall_inside(paths["types"])
    write_tiff_atomic(paths["types"], types)
    with atomic_path(paths["overlay"]) as tmp:
        overlay.save(tmp, format="PNG")
    t_write = time.perf_counter()
    st = pred.status_of(job.name) if len(pred.image_status) else {}
    n_types = {t: int((table["cell_type"] == t).sum()) for t in m.type_labels}
    rec = {
        "image": job.name,
        "source": job.source,
        "mask": job.mask_path,
        "panel": job.panel_path,
        "shape": [int(s) for s in image.shape],
        "channels": list(image.channels),
        "cells": int(len(table)),
        "type_counts": n_types,
        "untyped": int(len(table) - sum(n_types.values())),
        "status": st.get("status"),
        "status_probability": _num(st.get("status_probability")),
        "status_probabilities": {lab: _num(st.get(_col("p_status_", lab))) for lab in m.status_labels},
        "markers_used": list(pred.used_markers),
        "markers_ignored": list(pred.unknown_markers),
        "warnings": caught_all,
        "model_fingerprint": fingerprint,
        "device": str(m.device),
        "dtype": str(next(m.lm.parameters()).dtype).removeprefix("torch."),
        "seconds": {"read": t_read - t0, "measure": t_measure - t_read, "model_load": t_model - t_measure,
                    "predict": t_pred - t_model, "write": t_write - t_pred, "total": t_write - t0},
    }
    write_json_atomic(rec, paths["done"])
    return rec


def _stall_inside(path: Path) -> None:
    """Testing hook: with ``S2S_BATCH_STALL_AFTER=N`` the (N+1)-th image this process annotates stalls
    (``S2S_BATCH_STALL_SECONDS``, default 3600 s) in the middle of its outputs: its cells CSV is
    written and a temporary file of its types TIFF exists, so a test can kill the run right there."""
    from .io import atomic_path

    if _COMPLETED_HERE < int(os.environ["S2S_BATCH_STALL_AFTER"]):
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"half-written")
        time.sleep(float(os.environ.get("S2S_BATCH_STALL_SECONDS", "3600")))
        raise RuntimeError("S2S_BATCH_STALL_AFTER hook: stalled image abandoned")


def _num(v):
    if v is None:
        return None
    v = float(v)
    return None if not np.isfinite(v) else v
