"""Semi-synthetic IMC images rendered from real tissue layouts (Damond et al. 2019).

The spatial structure (cell positions, cell types, donors, stages) comes from the real layout table
``damond_diabetes_layouts/cells.csv.gz`` (253,777 cells, 120 images); only the pixels are simulated:

1. **Masks.** Every layout cell gets a seed pixel at its centroid (1 px = 1 um). Pixels are given to the
   nearest seed (a discrete Voronoi tessellation, ``scipy.ndimage.distance_transform_edt``), but only
   within a radius drawn per cell from its type (acinar cells are larger than lymphocytes). The seed
   pixel always belongs to its own cell, so every layout cell becomes exactly one mask object
   (object id = position of the cell in its image, 1..n) and ``labels.csv`` lists exactly the mask
   objects. Two cells that round to the same pixel (none in the Damond layouts) are moved to the
   nearest free pixel.
2. **Expression.** Each cell's mean counts per marker come from the committed per-type profile table
   (``data/celltype_profiles.csv``; reasoning in ``data/celltype_profiles.md``), times log-normal
   cell-to-cell variation, a per-image staining factor per channel, a small share of weak cells
   (identity markers dimmed), a share of ambiguous cells (profile mixed with the nearest
   neighbour's type, as a merged or mis-placed segmentation does), rare cycling cells (Ki67, pRB,
   pH3) and one stage effect where biology puts it: residual beta cells lose insulin/proinsulin
   (and IAPP) at onset and more so in long-duration diabetes. No other marker depends on stage.
3. **Pixels.** Each marker is placed in the nucleus, the cytoplasm or on the membrane of its cell
   (``data/damond_panel.csv``), normalised so the cell's mean equals its expression, blurred with a
   Gaussian point spread (spill into neighbouring cells), plus a low background, then drawn as
   Poisson ion counts; a few hot pixels are added.

Randomness: image *i* (its position in the sorted list of all layout images) uses its own stream
``numpy.random.SeedSequence([seed, i])``, so an image's bytes do not depend on which other images are
rendered, nor on the number of worker processes.

Output: a steinbock folder (``img/``, ``ome/``, ``masks/``, ``panel.csv``, ``images.csv``,
``labels.csv``). The results are semi-synthetic: say so wherever they are used.
"""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage
from scipy.spatial import cKDTree

from ..errors import S2SInputError
from ..io import atomic_path, write_csv_atomic, write_tiff_atomic

# the package's data folder (spatial2sentence/data), which ships the profile and panel tables
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
PROFILES_PATH = DATA_DIR / "celltype_profiles.csv"
PANEL_PATH = DATA_DIR / "damond_panel.csv"

LAYOUT_COLUMNS = ("imageID", "x", "y", "cellType", "case", "stage")
CELL_TYPES = (
    "acinar", "ductal", "alpha", "beta", "delta", "gamma", "stromal", "endothelial",
    "Tc", "Th", "naiveTc", "B", "macrophage", "neutrophil", "otherimmune", "unknown",
)
PLACEMENTS = ("nucleus", "cytoplasm", "membrane")
# Mean cell radius (um) per type; areas of ~45-75 px match the real Damond masks (median 41-54 px).
CELL_RADIUS_UM = {
    "acinar": 4.6, "ductal": 4.1, "alpha": 4.3, "beta": 4.4, "delta": 4.1, "gamma": 4.1,
    "stromal": 3.9, "endothelial": 3.6, "Tc": 3.3, "Th": 3.3, "naiveTc": 3.2, "B": 3.4,
    "macrophage": 4.1, "neutrophil": 3.6, "otherimmune": 3.4, "unknown": 3.9,
}
# Relative marker density per compartment (nucleus, cytoplasm, membrane), per placement.
COMPARTMENT_WEIGHTS = {
    "nucleus": (1.0, 0.08, 0.04),
    "cytoplasm": (0.15, 1.0, 0.6),
    "membrane": (0.1, 0.3, 1.0),
}
# Stage effect (the only one): residual beta cells lose insulin content. Calibrated on the real
# Damond toy images (beta-cell PIN mean 16.4 non-diabetic vs 8.5 at onset, 0.52x).
STAGE_EFFECTS = {
    ("beta", "Onset"): {"PIN": 0.55, "INS": 0.65, "IAPP": 0.75},
    ("beta", "Long-duration"): {"PIN": 0.35, "INS": 0.4, "IAPP": 0.5},
}
# Markers never dimmed by the "weak cell" draw (shared by every cell, not identity markers).
_HOUSEKEEPING = ("H3", "DNA1", "DNA2", "pRB", "Ki67", "pH3")


@dataclass(frozen=True)
class SimParams:
    """Noise and rendering parameters (their reasoning: ``data/celltype_profiles.md``)."""

    cell_sigma: float = 0.6           # log-normal sd of each cell's expression per marker
    cell_scale_sigma: float = 0.25    # log-normal sd of a per-cell factor shared by all markers
    image_sigma: float = 0.15         # log-normal sd of a per-image, per-channel staining factor
    radius_sigma: float = 0.12        # log-normal sd of the per-cell radius
    nucleus_frac: float = 0.55        # nucleus radius / cell radius
    weak_frac: float = 0.25           # share of cells whose identity markers are dimmed ...
    weak_range: tuple = (0.02, 0.25)   # ... by a factor drawn uniformly in this range
    ambiguous_frac: float = 0.10      # share of cells mixed with their nearest neighbour's type ...
    ambiguous_range: tuple = (0.35, 0.65)  # ... with this weight on the neighbour's profile
    unknown_mix_range: tuple = (0.2, 0.6)  # weight of a random type's profile in "unknown" cells
    cycling_frac: float = 0.02        # share of cycling cells (Ki67 x12, pRB x4; a quarter pH3 x15)
    field_sigma: float = 0.5          # log sd of the smooth regional staining field per channel
    field_scale_um: float = 40.0      # grid step of that field (correlation length ~ 1-2 steps)
    blur_sigma: float = 1.0           # Gaussian point spread (px)
    background: float = 0.3           # mean background counts per pixel (times a per-channel factor)
    hot_pixel_frac: float = 5e-5      # share of hot pixels per channel
    hot_pixel_range: tuple = (30.0, 200.0)


# ----------------------------------------------------------------------------------------- tables


def load_profiles(path: str | Path = PROFILES_PATH) -> pd.DataFrame:
    """The per-type mean-count table (rows = the 16 cell types, columns = panel markers)."""
    prof = pd.read_csv(path, index_col=0)
    missing = [t for t in CELL_TYPES if t not in prof.index]
    if missing:
        raise S2SInputError(path, f"profile table lacks cell types {missing}")
    return prof.astype(float)


def load_panel(path: str | Path = PANEL_PATH) -> pd.DataFrame:
    """The simulated panel: ``channel`` (metal tag), ``name`` (marker), ``placement``."""
    panel = pd.read_csv(path)
    bad = sorted(set(panel["placement"]) - set(PLACEMENTS))
    if bad:
        raise S2SInputError(path, f"unknown placement(s) {bad}")
    return panel


def load_layouts(path: str | Path) -> pd.DataFrame:
    """Read and check a layout table (Damond ``cells.csv.gz`` format)."""
    path = Path(path)
    if not path.is_file():
        raise S2SInputError(path, "layout file not found")
    try:
        df = pd.read_csv(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise S2SInputError(path, f"cannot read as CSV ({type(err).__name__})") from None
    missing = [c for c in LAYOUT_COLUMNS if c not in df.columns]
    if missing:
        raise S2SInputError(path, f"missing column(s) {', '.join(missing)}")
    if df.empty:
        raise S2SInputError(path, "no cells")
    unknown = sorted(set(df["cellType"].astype(str)) - set(CELL_TYPES))
    if unknown:
        raise S2SInputError(path, f"unknown cell type(s) {unknown[:5]}")
    for c in ("x", "y"):
        v = pd.to_numeric(df[c], errors="coerce")
        if v.isna().any() or (v < 0).any():
            raise S2SInputError(path, f"column {c} must hold non-negative numbers")
        df[c] = v.astype(float)
    df["imageID"] = df["imageID"].astype(str)
    return df


def image_ids(layouts: pd.DataFrame) -> list[str]:
    """All image ids of a layout table, sorted (the position sets each image's random stream)."""
    return sorted(layouts["imageID"].unique())


# ------------------------------------------------------------------------------------------ masks


def _seed_pixels(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> tuple:
    """One distinct pixel per cell; a cell whose pixel is taken moves to the nearest free pixel."""
    rows, cols = rows.copy(), cols.copy()
    flat = rows * shape[1] + cols
    _, first = np.unique(flat, return_index=True)
    dup = np.setdiff1d(np.arange(len(flat)), first)
    if len(dup):
        taken = np.zeros(shape, bool)
        taken[rows[first], cols[first]] = True
        for i in dup:  # rare: solved one by one, in cell order (deterministic)
            # the nearest free pixel to (r, c): search squares of growing size
            r, c = rows[i], cols[i]
            for rad in range(1, max(shape)):
                r0, r1 = max(r - rad, 0), min(r + rad + 1, shape[0])
                c0, c1 = max(c - rad, 0), min(c + rad + 1, shape[1])
                free = np.argwhere(~taken[r0:r1, c0:c1])
                if len(free):
                    d = (free[:, 0] + r0 - r) ** 2 + (free[:, 1] + c0 - c) ** 2
                    k = np.lexsort((free[:, 1], free[:, 0], d))[0]
                    rows[i], cols[i] = free[k, 0] + r0, free[k, 1] + c0
                    break
            else:
                raise S2SInputError(None, "more cells than pixels in an image")
            taken[rows[i], cols[i]] = True
    return rows, cols


def render_mask(
    x: np.ndarray, y: np.ndarray, radius: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Mask of cells grown from centroids: Voronoi regions cut at each cell's radius.

    Returns ``(mask, dist)``: ``mask`` uint32 with object ``i + 1`` for cell ``i`` (each cell gets at
    least its seed pixel), ``dist`` the distance (px) of each pixel to its cell's seed.
    """
    h, w = shape
    rows = np.clip(np.rint(y).astype(np.int64), 0, h - 1)
    cols = np.clip(np.rint(x).astype(np.int64), 0, w - 1)
    rows, cols = _seed_pixels(rows, cols, shape)
    seeds = np.zeros(shape, np.uint32)
    seeds[rows, cols] = np.arange(1, len(rows) + 1, dtype=np.uint32)
    dist, (ir, ic) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    owner = seeds[ir, ic]
    rad = np.concatenate([[0.0], radius]).astype(np.float64)
    mask = np.where(dist <= rad[owner], owner, 0).astype(np.uint32)
    return mask, dist


def compartments(mask: np.ndarray, dist: np.ndarray, nucleus_radius: np.ndarray) -> np.ndarray:
    """Per pixel: -1 background, 0 nucleus, 1 cytoplasm, 2 membrane (pixel on the cell border)."""
    border = np.zeros(mask.shape, bool)
    border[1:, :] |= mask[1:, :] != mask[:-1, :]
    border[:-1, :] |= mask[:-1, :] != mask[1:, :]
    border[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    border[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    nuc_r = np.concatenate([[0.0], nucleus_radius])
    comp = np.where(border, 2, 1).astype(np.int8)
    comp[dist <= nuc_r[mask]] = 0  # nucleus wins over the border (tiny cells)
    comp[mask == 0] = -1
    return comp


# ------------------------------------------------------------------------------------- expression


def cell_expression(
    cell_types: np.ndarray,
    stage: str,
    x: np.ndarray,
    y: np.ndarray,
    profiles: pd.DataFrame,
    markers: list[str],
    rng: np.random.Generator,
    params: SimParams,
) -> np.ndarray:
    """Mean counts per cell (rows) and marker (columns) for the cells of one image."""
    n, m = len(cell_types), len(markers)
    prof = profiles.loc[list(CELL_TYPES), markers].to_numpy(float)
    tidx = np.array([CELL_TYPES.index(t) for t in cell_types], dtype=np.int64)
    base = prof[tidx].copy()
    # ambiguous cells: part of the nearest other cell's profile (merged / misplaced segmentation)
    amb = rng.random(n) < params.ambiguous_frac
    amb_w = rng.uniform(*params.ambiguous_range, size=n)
    if n > 1 and amb.any():
        _, nn = cKDTree(np.c_[x, y]).query(np.c_[x, y][amb], k=2)
        base[amb] = (1 - amb_w[amb, None]) * base[amb] + amb_w[amb, None] * prof[tidx[nn[:, 1]]]
    # unknown cells (unassignable in the original study): their low generic profile partly mixed
    # with a random other type (uniform over the 15 named types), so they resemble no single type
    unk = np.flatnonzero(tidx == CELL_TYPES.index("unknown"))
    other = rng.integers(0, len(CELL_TYPES) - 1, size=len(unk))
    unk_w = rng.uniform(*params.unknown_mix_range, size=len(unk))
    base[unk] = (1 - unk_w[:, None]) * base[unk] + unk_w[:, None] * prof[other]
    # weak cells: identity markers (over twice the cross-type median of that marker) dimmed
    weak = rng.random(n) < params.weak_frac
    weak_f = rng.uniform(*params.weak_range, size=n)
    identity = prof > 2.0 * np.median(prof, axis=0)[None, :]
    keep = np.array([mk in _HOUSEKEEPING for mk in markers])
    dim = identity[tidx] & ~keep[None, :] & weak[:, None]
    base = np.where(dim, base * weak_f[:, None], base)
    # stage effect: insulin loss of residual beta cells
    for (ctype, st), effects in STAGE_EFFECTS.items():
        if st == stage:
            sel = tidx == CELL_TYPES.index(ctype)
            for mk, f in effects.items():
                if mk in markers:
                    base[sel, markers.index(mk)] *= f
    # cycling cells
    cyc = rng.random(n) < params.cycling_frac
    mitotic = cyc & (rng.random(n) < 0.25)
    for mk, f, sel in (("Ki67", 12.0, cyc), ("pRB", 4.0, cyc), ("pH3", 15.0, mitotic)):
        if mk in markers:
            base[sel, markers.index(mk)] *= f
    # regional staining: per channel, a smooth log-field over the tissue (uneven antibody access,
    # section thickness); cells close together share it, so neighbours carry the local baseline
    if params.field_sigma > 0:
        step = params.field_scale_um
        gh, gw = int(np.ceil(y.max() / step)) + 2, int(np.ceil(x.max() / step)) + 2
        grid = ndimage.gaussian_filter(rng.normal(size=(m, gh, gw)), sigma=(0, 1, 1), mode="wrap")
        grid /= grid.reshape(m, -1).std(axis=1)[:, None, None] + 1e-12
        coords = np.array([y / step, x / step])
        field = np.stack([ndimage.map_coordinates(grid[j], coords, order=1) for j in range(m)], 1)
        f = params.field_sigma
        base = base * np.exp(f * field - f * f / 2)
    # log-normal variation (mean-preserving), per cell x marker and per cell
    s, g = params.cell_sigma, params.cell_scale_sigma
    noise = np.exp(rng.normal(-s * s / 2, s, size=(n, m)) + rng.normal(-g * g / 2, g, size=(n, 1)))
    return base * noise


# ------------------------------------------------------------------------------------------ image


@dataclass
class RenderedImage:
    name: str
    image: np.ndarray  # (C, H, W) float32 counts
    mask: np.ndarray  # (H, W) uint32
    labels: pd.DataFrame  # image, Object, cell_type, donor, stage


def image_shape(cells: pd.DataFrame) -> tuple[int, int]:
    """(height, width) in px at 1 um/px: the layout's extent (the acquisitions start at 0)."""
    return int(np.floor(cells["y"].max())) + 1, int(np.floor(cells["x"].max())) + 1


def render_image(
    cells: pd.DataFrame,
    index: int,
    seed: int = 0,
    profiles: pd.DataFrame | None = None,
    panel: pd.DataFrame | None = None,
    params: SimParams | None = None,
) -> RenderedImage:
    """Render one image from its layout rows (all with the same ``imageID``).

    ``index`` is the image's position in :func:`image_ids` of the full layout table; with ``seed`` it
    selects the image's random stream.
    """
    profiles = load_profiles() if profiles is None else profiles
    panel = load_panel() if panel is None else panel
    params = SimParams() if params is None else params
    name = str(cells["imageID"].iloc[0])
    markers = panel["name"].tolist()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    h, w = image_shape(cells)
    x, y = cells["x"].to_numpy(float), cells["y"].to_numpy(float)
    ctypes = cells["cellType"].astype(str).to_numpy()
    stage = str(cells["stage"].iloc[0])
    n = len(cells)

    mean_r = np.array([CELL_RADIUS_UM[t] for t in ctypes])
    radius = mean_r * np.exp(rng.normal(0.0, params.radius_sigma, size=n))
    mask, dist = render_mask(x, y, radius, (h, w))
    comp = compartments(mask, dist, params.nucleus_frac * radius)

    expr = cell_expression(ctypes, stage, x, y, profiles, markers, rng, params)
    img_factor = np.exp(rng.normal(0.0, params.image_sigma, size=len(markers)))
    expr *= img_factor[None, :]

    # Per placement: pixel weight / the cell's mean weight, so the cell mean equals its expression.
    inside = mask > 0
    lab = mask[inside].astype(np.int64)
    cmp = comp[inside].astype(np.int64)
    counts = np.zeros((n + 1, 3))
    np.add.at(counts, (lab, cmp), 1.0)
    area = counts.sum(axis=1)
    area[0] = 1.0
    factor = {}
    for p in PLACEMENTS:
        wts = np.asarray(COMPARTMENT_WEIGHTS[p])
        cell_mean_w = (counts @ wts) / area
        cell_mean_w[0] = 1.0
        factor[p] = wts[cmp] / cell_mean_w[lab]

    lam = np.zeros((len(markers), h, w), np.float32)
    lab0 = lab - 1
    for ci, (mk, p) in enumerate(zip(markers, panel["placement"])):
        lam[ci][inside] = expr[lab0, ci] * factor[p]
    ndimage.gaussian_filter(lam, sigma=(0, params.blur_sigma, params.blur_sigma), output=lam,
                            truncate=3.0)
    # background: tissue autofluorescence-free IMC has low counts; per-channel level varies
    bg = params.background * np.exp(rng.normal(0.0, 0.5, size=len(markers)))
    lam += bg[:, None, None].astype(np.float32)
    counts_img = rng.poisson(lam).astype(np.float32)
    n_hot = rng.binomial(h * w, params.hot_pixel_frac, size=len(markers))
    for ci, k in enumerate(n_hot):
        if k:
            pos = rng.integers(0, h * w, size=k)
            counts_img[ci].flat[pos] = rng.uniform(*params.hot_pixel_range, size=k).round()

    labels = pd.DataFrame({
        "image": name,
        "Object": np.arange(1, n + 1, dtype=np.int64),
        "cell_type": ctypes,
        "donor": cells["case"].to_numpy(),
        "stage": stage,
    })
    return RenderedImage(name=name, image=counts_img, mask=mask, labels=labels)


# -------------------------------------------------------------------------------------------- I/O


def _write_ome_tiff(path: Path, array: np.ndarray, channel_names: list[str]) -> None:
    """Atomic OME-TIFF whose bytes depend only on the array and names.

    ``spatial2sentence.io.write_tiff_atomic(ome=True)`` lets tifffile put a time-based ``uuid1`` into
    the OME-XML, so two identical runs differ; here the UUID is derived from the content instead.
    """
    h = hashlib.sha256(np.ascontiguousarray(array).tobytes())
    h.update("\t".join(channel_names).encode())
    meta = {"axes": "CYX", "UUID": f"urn:uuid:{uuid.UUID(bytes=h.digest()[:16])}",
            "PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0, "Channel": {"Name": list(channel_names)}}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, ome=True, metadata=meta, photometric="minisblack",
                         software=False)


def _render_and_write(job) -> tuple[pd.DataFrame, dict]:
    cells, index, seed, out_dir, params, profiles, panel = job
    r = render_image(cells, index, seed=seed, profiles=profiles, panel=panel, params=params)
    names = panel["name"].tolist()
    out_dir = Path(out_dir)
    write_tiff_atomic(out_dir / "img" / f"{r.name}.tiff", r.image)
    _write_ome_tiff(out_dir / "ome" / f"{r.name}.ome.tiff", r.image, names)
    mask = r.mask.astype(np.uint16) if r.mask.max() < 65536 else r.mask
    write_tiff_atomic(out_dir / "masks" / f"{r.name}.tiff", mask)
    info = {"image": f"{r.name}.tiff", "width_px": r.image.shape[2], "height_px": r.image.shape[1],
            "num_channels": r.image.shape[0], "num_cells": len(r.labels),
            "donor": r.labels["donor"].iloc[0], "stage": r.labels["stage"].iloc[0]}
    return r.labels, info


def simulate_dataset(
    layouts_path: str | Path,
    out_dir: str | Path,
    images: list[str] | None = None,
    n_images: int | None = None,
    seed: int = 0,
    workers: int = 1,
    params: SimParams | None = None,
    progress=None,
) -> pd.DataFrame:
    """Render layout images into a steinbock folder ``out_dir``; returns the labels table.

    ``images`` selects image ids; ``n_images`` takes the first N (sorted) ids; default all. The bytes
    of each image depend only on (``seed``, the image's position in the full layout table), never on
    ``workers`` or on the selection.
    """
    layouts_path = Path(layouts_path)
    layouts = load_layouts(layouts_path)
    all_ids = image_ids(layouts)
    if images is not None and n_images is not None:
        raise S2SInputError(None, "give either images or n_images, not both")
    if images is not None:
        images = [str(i).strip() for i in images if str(i).strip()]
        unknown = [i for i in images if i not in set(all_ids)]
        if unknown:
            raise S2SInputError(layouts_path, f"no image(s) {', '.join(unknown[:5])} in the layouts")
        if not images:
            raise S2SInputError(None, "empty image selection")
        chosen = list(dict.fromkeys(images))
    elif n_images is not None:
        if n_images < 1:
            raise S2SInputError(None, f"n_images must be >= 1 (got {n_images})")
        chosen = all_ids[:n_images]
    else:
        chosen = all_ids
    params = SimParams() if params is None else params
    profiles, panel = load_profiles(), load_panel()
    missing = [m for m in panel["name"] if m not in profiles.columns]
    if missing:
        raise S2SInputError(PROFILES_PATH, f"profile table lacks markers {missing}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = dict(tuple(layouts.groupby("imageID", sort=False)))
    pos = {name: i for i, name in enumerate(all_ids)}
    jobs = [(groups[name], pos[name], seed, str(out_dir), params, profiles, panel)
            for name in chosen]
    results = []
    if workers > 1 and len(jobs) > 1:
        # biggest images first so the pool stays balanced; results are re-ordered afterwards
        order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][0]))
        with ProcessPoolExecutor(max_workers=workers) as ex:
            futs = {j: ex.submit(_render_and_write, jobs[j]) for j in order}
            for j in order:
                futs[j].result()
                if progress:
                    progress(1)
            results = [futs[j].result() for j in range(len(jobs))]
    else:
        for job in jobs:
            results.append(_render_and_write(job))
            if progress:
                progress(1)
    labels = pd.concat([r[0] for r in results], ignore_index=True)
    write_csv_atomic(labels, out_dir / "labels.csv")
    write_csv_atomic(pd.DataFrame([r[1] for r in results]), out_dir / "images.csv")
    write_csv_atomic(panel.assign(keep=1)[["channel", "name", "keep"]], out_dir / "panel.csv")
    return labels


__all__ = [
    "SimParams", "RenderedImage", "load_layouts", "load_profiles", "load_panel", "image_ids",
    "render_mask", "compartments", "cell_expression", "render_image", "simulate_dataset",
    "image_shape",
]
