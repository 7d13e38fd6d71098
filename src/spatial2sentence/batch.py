"""Batch annotation of a folder of IMC images: every cell typed, per image and for the whole run.

Pure library code (no Qt): used by ``s2s annotate``, the napari batch widget and ``benchmarks/batch.py``.

Inputs (:func:`discover`)
-------------------------
``INPUT`` is read as the first of these that fits:

1. **steinbock folder**: ``INPUT/img/`` exists. Images ``img/X.tiff`` with masks ``masks/X.tiff`` and the
   channels named by ``panel.csv`` (steinbock's own layout, :func:`~spatial2sentence.io.read_steinbock`).
2. **MCD folder**: ``INPUT`` holds ``*.mcd`` files. Every acquisition of ``F.mcd`` is one image named
   ``F_<acquisition id, 3 digits>`` (steinbock's naming); its mask must be
   ``INPUT/masks/F_<id:03d>.tiff`` (or ``.tif``), e.g. ``masks/slide1_001.tiff``. Channels are named by
   ``INPUT/panel.csv`` when it exists (matched by metal tag), else by the acquisition's channel labels.
3. **image + mask folder**: every other TIFF directly in ``INPUT`` (``.tiff``, ``.tif``, ``.ome.tiff``)
   is an image ``X``; its mask is ``X_mask.tiff`` beside it (also ``X_mask.tif``), else
   ``masks/X.tiff`` (or ``masks/X.tif``). Files named ``*_mask.tif(f)`` are never images. Channels
   are named by ``INPUT/panel.csv`` when it exists, else by the OME / ImageJ metadata.

An image whose mask is missing, or that cannot be read, measured or predicted, is reported in
``errors.csv`` and the run goes on.

Outputs (under ``OUT``)
-----------------------
Per image ``X`` (written by :func:`annotate_image`, each file atomically: temporary name, then rename):

- ``cells/X.csv``: ``Object``, ``x``, ``y`` (um), ``area`` (px), the mean of every marker (and
  ``nonfinite_pixels`` when the image has NaN/inf pixels), ``cell_type``, ``cell_type_probability``,
  ``p_<type>`` for every type, per-cell ``status``, ``status_probability``, ``p_status_<label>``;
- ``types/X.tiff``: the class-ID mask (0 = background, k = k-th class of the model + 1; a cell the
  model could not type is 0 too); uint8 (uint16 beyond 254 classes);
- ``overlays/X.png``: cell types blended over a grey DNA/H3 composite (mean of all channels when the
  image has no DNA/histone channel), cell borders darker, with a legend of the types present;
- ``done/X.json``: written LAST: the image's clinical status, cell count, markers used, warnings, the
  model's fingerprint, timings. An image counts as done when this file and the three outputs above
  exist and the model fingerprint matches; a rerun skips done images unless ``overwrite``.

For the run (rebuilt at the end from the per-image files of every image of ``INPUT`` that is done):
``summary.csv`` (per image: cells, counts per type, predicted clinical status and its probabilities),
``cells.h5ad`` (AnnData: ``X`` marker means, ``obs`` predictions with ``image`` and ``Object``,
``obsm['spatial']`` x, y in um, ``uns`` class names and colours, per-image status), ``errors.csv``
(``image``, ``file``, ``reason``: the images that failed in this run) and ``run.json`` (model,
versions, settings, timings).

Execution
---------
In-process (default), on a new ``distributed.LocalCluster`` (``workers=N``: N processes with one
thread each, torch limited to one thread), or on an existing Dask cluster (``scheduler=
"tcp://host:port"``; its workers need spatial2sentence installed and ``OUT`` on a shared file
system). Each image is one task; the model is loaded once per worker process (module-level cache
keyed by model path and device). Results do not depend on how the images are run.

A killed run leaves every finished image intact (atomic writes; stale temporary files are removed
at the start of the next run) and the next run continues where it stopped. One run at a time writes
into an output folder (:func:`~spatial2sentence.io.folder_lock`): a second is refused at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .errors import MaskError, S2SInputError, first_line
from .predict import PREDICT_BATCH_SIZE

SUBDIRS = ("cells", "types", "overlays", "done")
_MASK_SUFFIXES = (".tiff", ".tif")
_DNA = re.compile(r"^(dna\d*|ir19[13]|h3|histone ?h3|hoechst|dapi)$", re.IGNORECASE)


class BatchCancelled(Exception):
    """The run was cancelled (the current image is discarded, finished images are kept)."""


# ----------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class ImageJob:
    """One image to annotate. ``problem`` is set when discovery already knows it cannot be done."""

    name: str
    image_path: str
    mask_path: str | None
    panel_path: str | None = None
    acquisition: int | None = None  # MCD acquisition id
    problem: str | None = None

    @property
    def source(self) -> str:
        return self.image_path if self.acquisition is None else f"{self.image_path}#{self.acquisition}"


@dataclass
class Discovery:
    kind: str  # "steinbock", "mcd" or "images"
    root: Path
    jobs: list[ImageJob]


def _find_mask(candidates: Sequence[Path]) -> Path | None:
    for c in candidates:
        if c.is_file():
            return c
    return None


def _dedupe(jobs: list[ImageJob]) -> list[ImageJob]:
    seen: dict[str, str] = {}
    out = []
    for j in jobs:
        if j.name in seen:
            # reported under its file name, so run-level tables keep one row per distinct image name
            j = ImageJob(Path(j.image_path).name, j.image_path, j.mask_path, j.panel_path, j.acquisition,
                         f"another input file has the same image name {j.name!r} ({Path(seen[j.name]).name})")
            out.append(j)
            continue
        seen[j.name] = j.image_path
        out.append(j)
    return out


def discover(input_dir: str | Path) -> Discovery:
    """List the images of ``input_dir`` (see the module doc for the three layouts and mask rules)."""
    from .io import image_stem, is_tiff, read_steinbock

    root = Path(input_dir)
    if not root.exists():
        raise S2SInputError(root, "input folder not found")
    if not root.is_dir():
        raise S2SInputError(root, "input must be a folder (steinbock folder, images + masks, or .mcd files)")
    panel = root / "panel.csv"
    panel_path = str(panel) if panel.is_file() else None

    if (root / "img").is_dir() or ((root / "ome").is_dir() and (root / "masks").is_dir()):
        folder = read_steinbock(root)
        jobs = [
            ImageJob(e.name, str(e.image_path), str(e.mask_path) if e.mask_path else None, str(root / "panel.csv"),
                     problem=None if e.mask_path else f"no mask masks/{e.image_path.name}")
            for e in folder.entries
        ]
        return Discovery("steinbock", root, _dedupe(jobs))

    mcds = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".mcd")
    if mcds:
        jobs = []
        for mcd in mcds:
            stem = image_stem(mcd)
            try:
                acq_ids = _mcd_acquisitions(mcd)
            except S2SInputError as err:
                jobs.append(ImageJob(stem, str(mcd), None, panel_path, problem=err.problem))
                continue
            for acq in acq_ids:
                name = f"{stem}_{acq:03d}"
                mask = _find_mask([root / "masks" / f"{name}{s}" for s in _MASK_SUFFIXES])
                jobs.append(ImageJob(
                    name, str(mcd), str(mask) if mask else None, panel_path, acq,
                    problem=None if mask else f"no mask masks/{name}.tiff for acquisition {acq}",
                ))
        return Discovery("mcd", root, _dedupe(jobs))

    images = sorted(
        p for p in root.iterdir()
        if p.is_file() and is_tiff(p) and not image_stem(p).endswith("_mask") and not p.name.startswith(".")
    )
    if not images:
        raise S2SInputError(
            root, "no images found: expected a steinbock folder (img/, masks/, panel.csv), .mcd files with "
            "masks/, or TIFF images with X_mask.tiff or masks/X.tiff masks"
        )
    jobs = []
    for p in images:
        stem = image_stem(p)
        mask = _find_mask([root / f"{stem}_mask{s}" for s in _MASK_SUFFIXES]
                          + [root / "masks" / f"{stem}{s}" for s in _MASK_SUFFIXES])
        jobs.append(ImageJob(stem, str(p), str(mask) if mask else None, panel_path,
                             problem=None if mask else f"no mask {stem}_mask.tiff or masks/{stem}.tiff"))
    return Discovery("images", root, _dedupe(jobs))


def _mcd_acquisitions(path: Path) -> list[int]:
    from .io import mcd_acquisition_ids

    return mcd_acquisition_ids(path)


def _read_mcd_acquisition(path: str, acq_id: int, name: str, panel_path: str | None):
    """One acquisition of an MCD file (instead of ``read_mcd``, which reads every acquisition)."""
    from .io import read_mcd_acquisition, read_panel

    panel = read_panel(panel_path) if panel_path else None
    image = read_mcd_acquisition(path, acq_id, panel, panel_path=panel_path)
    image.name = name
    return image


# ----------------------------------------------------------------------------------------- model
_MODELS: dict[tuple[str, str], object] = {}
_MODEL_LOCK = threading.Lock()


def resolve_model_dir(model: str | Path | None) -> Path:
    from .model import DEFAULT_MODEL_DIR

    return DEFAULT_MODEL_DIR if model is None else Path(model)


def get_model(model: str | Path | None, device: str = "auto", dtype: str = "auto"):
    """The model, loaded once per process (and per device and dtype) and cached at module level."""
    from .model import S2SModel

    key = (str(resolve_model_dir(model).resolve()), str(device), str(dtype))
    with _MODEL_LOCK:
        if key not in _MODELS:
            _MODELS[key] = S2SModel.from_pretrained(model, device=device, dtype=dtype)
        return _MODELS[key]


def model_meta(model: str | Path | None) -> dict:
    """Label sets, markers and a fingerprint of a model directory, without loading torch."""
    from .model import check_model_dir

    path = resolve_model_dir(model)
    cfg = check_model_dir(path)  # the one model-folder check (one message for every problem)
    h = hashlib.sha256()
    for name in ("s2s_config.json", "config.json", "tokenizer.json", "model.safetensors"):
        p = path / name
        if p.is_file():
            h.update(name.encode())
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
    return {
        "path": str(path.resolve()),
        "default": model is None,
        "fingerprint": h.hexdigest()[:16],
        "type_labels": list(cfg["type_labels"]),
        "status_labels": list(cfg["status_labels"]),
        "markers": list(cfg.get("markers", [])),
        "name": cfg.get("info", {}).get("name"),
    }


# ----------------------------------------------------------------------------------------- one image
def output_paths(out_dir: str | Path, name: str) -> dict[str, Path]:
    out = Path(out_dir)
    return {
        "cells": out / "cells" / f"{name}.csv",
        "types": out / "types" / f"{name}.tiff",
        "overlay": out / "overlays" / f"{name}.png",
        "done": out / "done" / f"{name}.json",
    }


def read_done(out_dir: str | Path, name: str, fingerprint: str | None = None) -> dict | None:
    """The done record of image ``name`` when all its outputs exist (and the model matches)."""
    paths = output_paths(out_dir, name)
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        rec = json.loads(paths["done"].read_text())
    except (OSError, ValueError):
        return None
    if fingerprint is not None and rec.get("model_fingerprint") != fingerprint:
        return None
    return rec


def _col(prefix: str, label: str) -> str:
    return prefix + str(label).replace(" ", "_")


def type_id_mask(mask: np.ndarray, objects: np.ndarray, cell_types: Sequence, type_labels: Sequence[str]) -> np.ndarray:
    """Class-ID mask: 0 background (and untyped cells), k = k-th label of ``type_labels`` + 1."""
    code = {t: k + 1 for k, t in enumerate(type_labels)}
    ids = np.array([code.get(t, 0) if isinstance(t, str) else 0 for t in cell_types], np.int64)
    dtype = np.uint8 if len(type_labels) < 255 else np.uint16
    objects = np.asarray(objects, np.int64)
    top = int(mask.max())
    if top <= 4 * mask.size:
        lut = np.zeros(top + 1, dtype)
        lut[objects] = ids
        return lut[mask]
    order = np.argsort(objects)
    pos = np.searchsorted(objects[order], mask.ravel())
    pos = np.clip(pos, 0, len(objects) - 1)
    hit = objects[order][pos] == mask.ravel()
    return np.where(hit, ids[order][pos], 0).astype(dtype).reshape(mask.shape)


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
    from PIL import ImageFont

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
    from PIL import Image, ImageDraw

    from .palette import hex_to_rgba

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


# ----------------------------------------------------------------------------------------- the run
@dataclass
class BatchResult:
    out_dir: Path
    kind: str
    records: list[dict]
    run: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.records if r["state"] == "error"]

    @property
    def ok(self) -> bool:
        return all(r["state"] in ("done", "skipped") for r in self.records)

    @property
    def cancelled(self) -> bool:
        return any(r["state"] == "cancelled" for r in self.records)


def clean_stale_parts(out_dir: str | Path) -> int:
    """Remove temporary ``.*.part`` files left by a killed run; returns how many."""
    out = Path(out_dir)
    n = 0
    for d in [out, *(out / s for s in SUBDIRS)]:
        if d.is_dir():
            for p in d.glob(".*.part"):
                p.unlink(missing_ok=True)
                n += 1
    return n


def run_batch(
    input_dir: str | Path,
    out_dir: str | Path,
    model: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    workers: int = 0,
    scheduler: str | None = None,
    overwrite: bool = False,
    batch_size: int | None = None,
    progress: Callable[[dict, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    client=None,
    threads: int | None = None,
    allow_partial_panel: bool = False,
) -> BatchResult:
    """Annotate every image of ``input_dir`` into ``out_dir`` (see the module doc).

    ``workers=0`` runs in this process; ``workers=N`` starts a LocalCluster of N single-threaded
    processes; ``scheduler`` connects to an existing cluster (``client`` an existing
    ``distributed.Client``). ``progress(record, done, total)`` is called once with ``record=None``
    before the first image, then as each image finishes;
    ``should_stop()`` returning True cancels (finished images are kept, run-level files are still
    written). ``threads``: batches scored at once in an in-process run (default: every available core; Dask
    workers always use 1); the outputs do not depend on it.
    """
    started = time.time()
    t0 = time.perf_counter()
    out = Path(out_dir)
    disc = discover(input_dir)
    if out.resolve() == disc.root.resolve():
        raise S2SInputError(out, "the output folder must differ from the input folder")
    meta = model_meta(model)
    from .model import check_dtype, resolve_device

    check_dtype(dtype)  # before any worker starts
    model_arg = None if model is None else str(Path(model).resolve())
    local = client is None and scheduler is None
    if local:
        resolve_device(device)  # the one device check, before any worker starts
    in_process = local and workers <= 0
    t_discover = time.perf_counter()
    if in_process:  # load once, here, so that a broken model fails the run once rather than every image
        try:
            get_model(model_arg, device, dtype)
        except S2SInputError:
            raise
        except Exception as err:
            raise S2SInputError(meta["path"], f"cannot load the model ({first_line(err)})") from None
    t_model = time.perf_counter()
    from .io import folder_lock, write_json_atomic

    # one run per output folder: a second would delete this run's temporary files and mix outputs
    with folder_lock(out):
        n_stale = clean_stale_parts(out)
        jobs = disc.jobs
        total = len(jobs)
        records: dict[str, dict] = {}
        mode = "in-process"
        kw = dict(out_dir=str(out), model=model_arg, device=device, dtype=dtype, batch_size=batch_size,
                  overwrite=overwrite, fingerprint=meta["fingerprint"], allow_partial_panel=allow_partial_panel)

        if progress is not None:
            progress(None, 0, total)

        def finish(rec):
            records[rec["image"]] = rec
            if progress is not None:
                progress(rec, len(records), total)

        if in_process:
            for job in jobs:
                if should_stop is not None and should_stop():
                    break
                finish(annotate_image(job, should_stop=should_stop, torch_threads=threads, **kw))
        else:
            from distributed import Client, LocalCluster, as_completed

            cluster = own_client = None
            if client is None:
                if scheduler is not None:
                    mode = f"dask scheduler {scheduler}"
                    client = own_client = Client(scheduler)
                else:
                    import logging

                    mode = f"dask LocalCluster ({workers} processes x 1 thread)"
                    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
                    client = own_client = Client(cluster)
            else:
                mode = "dask client"
            try:
                # the skip check is cheap: done images never leave this process
                todo = []
                for job in jobs:
                    rec = None if overwrite else read_done(out, job.name, meta["fingerprint"])
                    if rec is not None:
                        finish({"image": job.name, "source": job.source, "file": None, "reason": None,
                                "state": "skipped", "cells": rec["cells"], "status": rec.get("status"),
                                "status_probability": rec.get("status_probability"), "seconds": 0.0})
                    else:
                        todo.append(job)
                futures = {client.submit(annotate_image, job, pure=False, torch_threads=1, **kw): job
                           for job in todo}
                for fut in as_completed(list(futures)):
                    job = futures[fut]
                    try:
                        rec = fut.result()
                    except Exception as err:  # worker died, cluster lost...
                        rec = {"image": job.name, "source": job.source, "state": "error", "file": job.source,
                               "reason": f"task failed on the cluster: {type(err).__name__}: {first_line(err)}",
                               "cells": None, "status": None, "status_probability": None, "seconds": None}
                    finish(rec)
                    if should_stop is not None and should_stop():
                        client.cancel([f for f in futures if not f.done()])
                        break
            finally:
                if own_client is not None:
                    own_client.close()
                if cluster is not None:
                    cluster.close()
        t_annotate = time.perf_counter()
        ordered = [records[j.name] for j in jobs if j.name in records]
        collected = collect_outputs(out, jobs, meta, records)
        t_collect = time.perf_counter()
        done_recs = [r for r in ordered if r["state"] == "done"]
        n_cells = sum(r["cells"] or 0 for r in done_recs)
        wall = t_annotate - t_discover
        run = {
            "command": "s2s annotate",
            "input": str(disc.root.resolve()),
            "input_kind": disc.kind,
            "output": str(out.resolve()),
            "model": meta,
            "settings": {"device": device, "dtype": dtype, "workers": workers, "scheduler": scheduler, "mode": mode,
                         "overwrite": overwrite, "batch_size": batch_size or PREDICT_BATCH_SIZE,
                         "scoring_threads": 1 if mode != "in-process" else (threads or "auto (every available core)")},
            "versions": versions(),
            "images": {
                "total": total,
                "annotated": len(done_recs),
                "skipped_already_done": sum(r["state"] == "skipped" for r in ordered),
                "failed": sum(r["state"] == "error" for r in ordered),
                "cancelled": total - sum(r["state"] in ("done", "skipped", "error") for r in ordered),
                "cells_in_outputs": collected["cells"],
            },
            "stale_temporary_files_removed": n_stale,
            "timings": {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                "discover_s": round(t_discover - t0, 3),
                "model_load_in_process_s": round(t_model - t_discover, 3) if in_process else None,
                "annotate_s": round(wall, 3),  # model load (or cluster start-up) to the last image
                "collect_s": round(t_collect - t_annotate, 3),
                "total_s": round(t_collect - t0, 3),
                "annotated_cells": n_cells,
                "images_per_minute": round(60 * len(done_recs) / wall, 3) if wall > 0 and done_recs else None,
                "cells_per_second": round(n_cells / wall, 1) if wall > 0 and done_recs else None,
                "per_image_s_sum": round(sum(r["seconds"] or 0 for r in done_recs), 3),
            },
        }
        write_json_atomic(run, out / "run.json")
    return BatchResult(out, disc.kind, ordered, run)


def versions() -> dict:
    from importlib import metadata

    v = {"python": platform.python_version()}
    for pkg in ("napari-s2s", "numpy", "pandas", "torch", "transformers", "anndata", "dask", "distributed",
                "tifffile", "readimc"):
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = None
    try:
        import torch

        v["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        v["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # pragma: no cover
        pass
    return v


# ----------------------------------------------------------------------------------------- run-level files
def collect_outputs(out_dir: str | Path, jobs: Sequence[ImageJob], meta: dict, records: dict[str, dict]) -> dict:
    """Rebuild ``summary.csv``, ``cells.h5ad`` and ``errors.csv`` from the per-image outputs of ``jobs``."""
    from .io import write_csv_atomic

    out = Path(out_dir)
    rows, tables, done = [], [], []
    for job in jobs:
        rec = read_done(out, job.name, meta["fingerprint"])
        if rec is None:
            continue
        done.append(rec)
        row = {"image": job.name, "cells": rec["cells"]}
        row.update({_col("n_", t): rec["type_counts"].get(t, 0) for t in meta["type_labels"]})
        row["n_untyped"] = rec.get("untyped", 0)
        row["status"] = rec.get("status")
        row["status_probability"] = rec.get("status_probability")
        row.update({_col("p_status_", s): rec["status_probabilities"].get(s) for s in meta["status_labels"]})
        rows.append(row)
        tables.append((job.name, rec, pd.read_csv(output_paths(out, job.name)["cells"])))
    columns = (["image", "cells"] + [_col("n_", t) for t in meta["type_labels"]]
               + ["n_untyped", "status", "status_probability"]
               + [_col("p_status_", s) for s in meta["status_labels"]])
    write_csv_atomic(pd.DataFrame(rows, columns=columns), out / "summary.csv")
    errs = [{"image": r["image"], "file": r["file"], "reason": r["reason"]}
            for j in jobs if (r := records.get(j.name)) is not None and r["state"] == "error"]
    write_csv_atomic(pd.DataFrame(errs, columns=["image", "file", "reason"]), out / "errors.csv")
    n = write_h5ad(out / "cells.h5ad", tables, meta)
    return {"cells": n, "images": len(done)}


def write_h5ad(path: Path, tables: list[tuple[str, dict, pd.DataFrame]], meta: dict) -> int:
    """AnnData of every cell: X marker means (NaN where an image lacks a marker), obs predictions."""
    import anndata as ad

    from .io import atomic_path
    from .palette import label_colors

    markers: list[str] = []
    for _, rec, _t in tables:
        markers += [c for c in rec["channels"] if c not in markers]
    type_labels, status_labels = meta["type_labels"], meta["status_labels"]
    pred_cols = (["cell_type", "cell_type_probability"] + [_col("p_", t) for t in type_labels]
                 + ["status", "status_probability"] + [_col("p_status_", s) for s in status_labels])
    xs, obs = [], []
    for name, rec, t in tables:
        xs.append(t.reindex(columns=markers).to_numpy(np.float32))
        o = pd.DataFrame({"image": name, "Object": t["Object"].to_numpy(np.int64),
                          "x": t["x"].to_numpy(np.float64), "y": t["y"].to_numpy(np.float64),
                          "area": t["area"].to_numpy(np.int64)})
        o["nonfinite_pixels"] = t["nonfinite_pixels"].to_numpy(np.int64) if "nonfinite_pixels" in t else 0
        for c in pred_cols:
            o[c] = t[c].to_numpy() if c in t else np.nan
        obs.append(o)
    if obs:
        X = np.concatenate(xs)
        obs_df = pd.concat(obs, ignore_index=True)
    else:
        X = np.zeros((0, len(markers)), np.float32)
        obs_df = pd.DataFrame(columns=["image", "Object", "x", "y", "area", "nonfinite_pixels", *pred_cols])
    obs_df.index = (obs_df["image"].astype(str) + "_" + obs_df["Object"].astype(str)).to_numpy()
    obs_df["image"] = pd.Categorical(obs_df["image"].astype(str), categories=[n for n, _, _ in tables])
    obs_df["cell_type"] = pd.Categorical(obs_df["cell_type"], categories=type_labels)
    obs_df["status"] = pd.Categorical(obs_df["status"], categories=status_labels)
    for c in [c for c in pred_cols if c.startswith("p_") or c.endswith("_probability")]:
        obs_df[c] = pd.to_numeric(obs_df[c], errors="coerce").astype(np.float64)
    adata = ad.AnnData(X=X, obs=obs_df, var=pd.DataFrame(index=pd.Index(markers, dtype=str)))
    adata.obsm["spatial"] = obs_df[["x", "y"]].to_numpy(np.float64)
    tc, sc = label_colors(type_labels), label_colors(status_labels)
    adata.uns["cell_type_colors"] = [tc[t] for t in type_labels]  # scanpy convention: per category
    adata.uns["status_colors"] = [sc[s] for s in status_labels]
    img_status = pd.DataFrame([
        {"image": n, "cells": rec["cells"], "status": rec.get("status") or "",
         "status_probability": rec.get("status_probability") if rec.get("status_probability") is not None else np.nan,
         **{_col("p_status_", s): (v if (v := rec["status_probabilities"].get(s)) is not None else np.nan)
            for s in status_labels}}
        for n, rec, _ in tables
    ], columns=["image", "cells", "status", "status_probability", *[_col("p_status_", s) for s in status_labels]])
    adata.uns["image_status"] = img_status.set_index("image")
    adata.uns["s2s"] = {
        "type_labels": list(type_labels),
        "status_labels": list(status_labels),
        "type_colors": tc,
        "status_colors": sc,
        "model_path": meta["path"],
        "model_fingerprint": meta["fingerprint"],
        "spatial_units": "um",
        "X": "mean marker intensity per cell (NaN where the image lacks the marker)",
    }
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return int(adata.n_obs)


__all__ = [
    "ImageJob", "Discovery", "BatchResult", "BatchCancelled", "discover", "annotate_image", "run_batch",
    "collect_outputs", "write_h5ad", "get_model", "model_meta", "type_id_mask", "render_overlay",
    "output_paths", "read_done", "clean_stale_parts", "versions",
]
