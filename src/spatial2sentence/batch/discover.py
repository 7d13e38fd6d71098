"""Finding the images of a batch input folder (steinbock folder, MCD files + masks, TIFFs + masks) and
reading one of them; see the :mod:`spatial2sentence.batch` doc for the layouts and mask rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MaskError, S2SInputError
from ..io import (IMCImage, image_stem, is_tiff, mcd_acquisition_ids, read_image, read_mask, read_mcd_acquisition,
                  read_panel, read_steinbock)

_MASK_SUFFIXES = (".tiff", ".tif")


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
    """List the images of ``input_dir`` (see the package doc for the three layouts and mask rules)."""
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
                acq_ids = mcd_acquisition_ids(mcd)
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


def read_job(job: ImageJob) -> tuple[IMCImage, np.ndarray]:
    """The image (named ``job.name``) and mask of one job, read and checked by :mod:`spatial2sentence.io`
    (one acquisition of an MCD file is read alone, not the whole file)."""
    if job.problem:
        raise S2SInputError(job.source, job.problem)
    if job.acquisition is not None:
        panel = read_panel(job.panel_path) if job.panel_path else None
        image = read_mcd_acquisition(job.image_path, job.acquisition, panel, panel_path=job.panel_path)
        image.name = job.name
    else:
        image = read_image(job.image_path, panel=job.panel_path)
    if job.mask_path is None:
        raise MaskError(job.source, "no mask")
    return image, read_mask(job.mask_path, shape=image.shape, image_path=job.image_path)
