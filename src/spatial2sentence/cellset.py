"""Cells prepared for a model: scaled expression in the model's marker order, pairs, prompt words.

:func:`prepare_cells` turns a cells table (``Object, x, y, <markers>`` and optionally ``image``,
``cell_type`` / phenotype, ``stage``) into a :class:`CellSet`:

* marker columns are mapped to canonical names (:mod:`.aliases`); markers the model does not know are
  warned about, listed in ``CellSet.unknown_markers`` and ignored; a table sharing no marker with the
  model raises :class:`~spatial2sentence.errors.ModelInputError` (unless it has a phenotype column);
* values are normalised (:mod:`.normalize`) into a (cells x model markers) matrix; markers the image
  lacks are flagged absent per image, and sentences only use present markers;
* cells without marker intensities but with a phenotype get phenotype sentences.

:class:`CellSet` then builds partner lists (:mod:`.pairs`) per image and the prompt words of any cell.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from . import prompts as P
from .aliases import canonical_marker
from .errors import ModelInputError
from .normalize import Normalizer
from .pairs import Pairs, build_pairs
from .numeric import VALUE_MAX
from .sentences import (NIL, cell_sentences, level_sentences, level_word, marker_levels, phenotype_sentence,
                        type_token, word_marker)
from .settings import PairSettings, PromptSettings, SentenceSettings

IMAGE_COLS = ("image", "imageID", "image_id", "ImageNumber", "sample")
OBJECT_COLS = ("Object", "object", "cellID", "CellID", "CellNb", "ObjectNumber", "cell_id")
X_COLS = ("x", "X", "Pos_X", "X_position", "centroid-1", "Location_Center_X", "X_centroid")
Y_COLS = ("y", "Y", "Pos_Y", "Y_position", "centroid-0", "Location_Center_Y", "Y_centroid")
TYPE_COLS = ("cell_type", "cellType", "CellType", "celltype", "phenotype")
STATUS_COLS = ("stage", "status", "clinical_status", "condition")
DONOR_COLS = ("donor", "case", "patient", "patient_id")
NON_MARKER = {
    c.lower()
    for c in (
        *IMAGE_COLS, *OBJECT_COLS, *X_COLS, *Y_COLS, *TYPE_COLS, *STATUS_COLS, *DONOR_COLS,
        "area", "Area", "nonfinite_pixels", "MajorAxisLength", "MinorAxisLength", "Eccentricity",
        "Solidity", "Extent", "Orientation", "Perimeter", "imageCellID", "slide", "part", "group",
        "cell_type_recovered", "Pattern", "centroid_x", "centroid_y", "axis_major_length",
        "axis_minor_length", "eccentricity", "perimeter", "label",
    )
}


def find_column(df: pd.DataFrame, names, required: str | None = None) -> str | None:
    for n in names:
        if n in df.columns:
            return n
    lower = {c.lower(): c for c in df.columns}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    if required:
        raise ModelInputError(required, f"no column among {list(names)}")
    return None


def marker_columns(df: pd.DataFrame) -> list[str]:
    """Numeric columns that are not positions, ids, labels or shape measurements."""
    return [
        c for c in df.columns
        if c.lower() not in NON_MARKER and pd.api.types.is_numeric_dtype(df[c])
    ]


@dataclass
class CellSet:
    image: np.ndarray  # str, per cell
    object_id: np.ndarray  # per cell
    xy: np.ndarray  # (n, 2) um
    z: np.ndarray  # (n, M) scaled values in the model's marker order (0 where absent)
    present: np.ndarray  # (n, M) bool: the cell's image measures this marker
    markers: list[str]  # the model's markers (canonical)
    phenotype: np.ndarray | None = None  # str per cell, for phenotype-only cells (else None / "")
    cell_type: np.ndarray | None = None
    status: np.ndarray | None = None
    donor: np.ndarray | None = None
    unknown_markers: list[str] = field(default_factory=list)
    used_markers: list[str] = field(default_factory=list)
    pairs: Pairs | None = None
    # per-marker (lo, hi) of the training z, for SentenceSettings.rank_by == "range"
    rank_bounds: tuple[np.ndarray, np.ndarray] | None = None
    # (M x n_levels-1) level bin edges on the range scale, for SentenceSettings.encoding == "levels"
    level_edges: np.ndarray | None = None
    _word_columns: dict | None = field(default=None, repr=False)
    _around_cache: dict | None = field(default=None, repr=False)
    # cell -> (its cached sentence, that sentence's word values): a cell's line recurs in the prompts of
    # the cells it partners (prediction: ~3.9 lines per cell)
    _values_cache: dict | None = field(default=None, repr=False)
    _phenotype_names: list = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.image)

    @property
    def is_phenotype(self) -> np.ndarray:
        if self.phenotype is None:
            return np.zeros(len(self), bool)
        return self.phenotype != ""

    # --- pairs -----------------------------------------------------------------------------------
    def build_pairs(self, settings: PairSettings, seed: int | None = None) -> Pairs:
        """Partners of every cell, within its image; expression cells and phenotype cells separately."""
        n = len(self)
        res = Pairs(
            np.full((n, settings.n_pos), -1, np.int64), np.full((n, settings.n_pos), np.nan, np.float32),
            np.full((n, settings.n_neg), -1, np.int64), np.full((n, settings.n_neg), np.nan, np.float32),
        )
        ph = self.is_phenotype
        for sel in (np.flatnonzero(~ph), np.flatnonzero(ph)):
            if sel.size == 0:
                continue
            if ph[sel[0]]:
                _, codes = np.unique(self.phenotype[sel], return_inverse=True)
                vec = np.eye(codes.max() + 1, dtype=np.float32)[codes]
            else:
                vec = np.where(self.present[sel], self.z[sel], 0.0)
            p = build_pairs(self.xy[sel], vec, self.image[sel], settings, seed)
            for name in ("pos_idx", "neg_idx"):
                src = getattr(p, name)
                getattr(res, name)[sel] = np.where(src >= 0, sel[np.maximum(src, 0)], -1)
            res.pos_dist[sel], res.neg_dist[sel] = p.pos_dist, p.neg_dist
            res.pos_threshold, res.neg_threshold = p.pos_threshold, p.neg_threshold
        self.pairs = res
        return res

    # --- sentences and prompts -------------------------------------------------------------------
    def sentences(self, idx, s: SentenceSettings, present: np.ndarray | None = None) -> list[list[str]]:
        """Sentences of cells ``idx``; ``present`` (M bools) further restricts the panel (training)."""
        idx = np.asarray(idx, np.int64)
        out: list[list[str] | None] = [None] * len(idx)
        ph = self.is_phenotype[idx]
        if ph.any():
            for j in np.flatnonzero(ph):
                out[j] = phenotype_sentence(self.phenotype[idx[j]])
        ex = np.flatnonzero(~ph)
        if ex.size:
            pres = self.present[idx[ex]]
            if present is not None:
                pres = pres & present[None, :]
            if s.encoding == "levels":
                sents = level_sentences(self.range_values(idx[ex]), self.markers, self.levels_for(s),
                                        s.level_threshold, pres)
            elif s.encoding == "values":
                sents = cell_sentences(self.range_values(idx[ex]), self.markers, len(self.markers),
                                       s.level_threshold, pres)
            elif s.encoding == "ranked":
                sents = cell_sentences(self.rank_values(idx[ex], s), self.markers, s.top_k, s.threshold, pres)
            else:
                raise ModelInputError("sentence settings", f"unknown encoding {s.encoding!r} "
                                                           "(use 'ranked', 'levels' or 'values')")
            for j, w in zip(ex, sents):
                out[j] = w
        return out  # type: ignore[return-value]

    def range_values(self, idx) -> np.ndarray:
        """Cells ``idx``'s values on the 0-1 range scale (between each marker's 1st and 99th training
        percentiles of z)."""
        if self.rank_bounds is None:
            raise ModelInputError("sentence settings", "the range scale needs the model's range statistics")
        lo, hi = self.rank_bounds
        return (self.z[idx] - lo) / (hi - lo)

    def levels_for(self, s: SentenceSettings) -> np.ndarray:
        """The level bin edges of the model (equal bins of [level_threshold, 1] where none were learned)."""
        e = self.level_edges
        if e is None or e.shape[1] != s.n_levels - 1:
            e = np.tile(np.linspace(s.level_threshold, 1.0, s.n_levels + 1)[1:-1], (len(self.markers), 1))
        return e

    def rank_values(self, idx, s: SentenceSettings) -> np.ndarray:
        """The values that order cells ``idx``'s markers in their sentences (see ``rank_by``)."""
        z = self.z[idx]
        if s.rank_by == "z":
            return z
        if s.rank_by == "range":
            if self.rank_bounds is None:
                raise ModelInputError("sentence settings", "rank_by 'range' needs the model's range statistics")
            lo, hi = self.rank_bounds
            return (z - lo) / (hi - lo)
        raise ModelInputError("sentence settings", f"unknown rank_by {s.rank_by!r} (use 'z' or 'range')")

    def partners(self, i: int) -> list[tuple[int, str, float, float, float]]:
        """(index, role, distance_um, dx, dy) of cell ``i``'s partners: positives then negatives."""
        if self.pairs is None:
            return []
        out = []
        for role, idx, dist in (("positive", self.pairs.pos_idx, self.pairs.pos_dist),
                                ("negative", self.pairs.neg_idx, self.pairs.neg_dist)):
            for j, d in zip(idx[i], dist[i]):
                if j >= 0:
                    dx, dy = self.xy[j] - self.xy[i]
                    out.append((int(j), role, float(d), float(dx), float(dy)))
        return out

    def context_words(
        self, i: int, s: SentenceSettings, ps: PromptSettings, present: np.ndarray | None = None,
        sentence_cache: dict | None = None,
    ) -> list[str]:
        """``[BOS] cell : ... ; near ... ; far ...`` of cell ``i`` (no task words)."""
        return self.context(i, s, ps, present, sentence_cache)[0]

    def context(
        self, i: int, s: SentenceSettings, ps: PromptSettings, present: np.ndarray | None = None,
        sentence_cache: dict | None = None,
    ) -> tuple[list[str], list[float]]:
        """The words of cell ``i``'s context (see :meth:`context_words`) and the value each word carries
        (:mod:`.numeric`): a marker word the value of its marker in the cell whose line it is on, every
        other word 0."""
        parts = self.partners(i) if ps.format == "multi" else []
        ids = [i] + [p[0] for p in parts]
        if sentence_cache is not None:
            sents = [sentence_cache[j] for j in ids]
        else:
            sents = self.sentences(ids, s, present)
        cut = s.partner_words if s.partner_words > 0 else None
        if sentence_cache is not None:
            vals = [self._cached_values(j, w) for j, w in zip(ids, sents)]
        else:
            vals = [self.word_values(j, w) for j, w in zip(ids, sents)]
        lines, values = [], [0.0, 0.0, 0.0, *vals[0], 0.0]
        for k, (j, role, d, dx, dy) in enumerate(parts):
            words = sents[k + 1][:cut]
            lines.append(P.partner_words("near" if role == "positive" else "far", d, dx, dy, words,
                                         ps.distance_bins_um))
            values += [0.0] * 4 + vals[k + 1][:cut] + [0.0]  # a word's value does not depend on the cut
        if ps.format == "multi" and ps.neighbourhood_k > 0:
            words, vals = self.around_sentence(i, s, ps)
            lines.append(["around", ":", *words, ";"])
            values += [0.0, 0.0, *vals, 0.0]
        return P.context_words(sents[0], lines), values

    def around_sentence(self, i: int, s: SentenceSettings, ps: PromptSettings) -> tuple[list[str], list[float]]:
        """The ``around`` line of cell ``i``: the mean over its ``neighbourhood_k`` nearest cells (same image)
        of their range values, as the ``neighbourhood_words`` highest markers (level words for a
        ``levels`` model) each carrying the mean; for phenotype cells the neighbours' phenotypes, most
        frequent first, each carrying its fraction. ``nil`` when the cell has no neighbour."""
        mean = self._neighbourhood(ps.neighbourhood_k)
        row = mean[i]
        if not np.isfinite(row).any():
            return [NIL], [0.0]
        if self.is_phenotype[i]:
            names = self._phenotype_names
            order = [j for j in np.argsort(-row, kind="stable") if row[j] > 0][:ps.neighbourhood_words]
            return [type_token(names[j]) for j in order], [float(row[j]) for j in order]
        order = [j for j in np.argsort(-row, kind="stable") if row[j] > s.level_threshold][:ps.neighbourhood_words]
        if not order:
            return [NIL], [0.0]
        if s.encoding == "levels":
            lev = marker_levels(row[None, :], self.levels_for(s))[0]
            words = [level_word(self.markers[j], lev[j]) for j in order]
        else:
            words = [self.markers[j] for j in order]
        return words, [float(min(row[j], VALUE_MAX)) for j in order]

    def _neighbourhood(self, k: int) -> np.ndarray:
        """Per cell, the mean over its ``k`` nearest other cells of the same image (and kind) of their
        clipped range values (expression cells) or phenotype indicators (phenotype cells); NaN rows for
        cells alone in their image. Cached per ``k``."""
        cache = self._around_cache if self._around_cache is not None else {}
        self._around_cache = cache
        if k in cache:
            return cache[k]
        ph = self.is_phenotype
        if ph.any():
            names, codes = np.unique(self.phenotype[ph].astype(str), return_inverse=True)
            self._phenotype_names = list(names)
        width = max(len(self.markers), len(self._phenotype_names) if ph.any() else 0)
        vec = np.zeros((len(self), width), np.float32)
        if (~ph).any():
            ex = np.flatnonzero(~ph)
            u = np.clip(self.range_values(ex), 0.0, VALUE_MAX) if self.rank_bounds is not None else self.z[ex]
            vec[ex, :len(self.markers)] = np.where(self.present[ex], u, 0.0)
        if ph.any():
            vec[np.flatnonzero(ph), codes] = 1.0
        out = np.full(vec.shape, np.nan, np.float32)
        for kind in (False, True):
            for im in np.unique(self.image[ph == kind].astype(str)) if (ph == kind).any() else []:
                sel = np.flatnonzero((self.image.astype(str) == im) & (ph == kind))
                if sel.size < 2:
                    continue
                kk = min(k, sel.size - 1)
                _, nb = cKDTree(self.xy[sel]).query(self.xy[sel], k=kk + 1)
                nb = np.asarray(nb).reshape(sel.size, -1)[:, 1:]
                out[sel] = vec[sel][nb].mean(1)
        cache[k] = out
        return out

    def _cached_values(self, i: int, sentence: list[str]) -> list[float]:
        """:meth:`word_values` of cell ``i``'s ``sentence`` (an object of a sentence cache), kept while
        that same sentence object is the cell's."""
        cache = self._values_cache if self._values_cache is not None else {}
        self._values_cache = cache
        hit = cache.get(i)
        if hit is None or hit[0] is not sentence:
            hit = cache[i] = (sentence, self.word_values(i, sentence))
        return hit[1]

    def word_values(self, i: int, words: list[str]) -> list[float]:
        """The value of each word of a sentence of cell ``i``: its marker's range value (clipped to
        ``[0, VALUE_MAX]``) for a marker word, 0 for any other word (``nil``, phenotype words)."""
        if self.rank_bounds is None or self.is_phenotype[i]:
            return [0.0] * len(words)
        if self._word_columns is None:
            self._word_columns = {m: j for j, m in enumerate(self.markers)}
        index = self._word_columns  # word -> its marker's column (None: not a marker word), filled as met
        for w in words:
            if w not in index:
                index[w] = index.get(word_marker(w))
        u = np.clip(self.range_values(i), 0.0, VALUE_MAX).tolist()
        return [u[j] if (j := index[w]) is not None else 0.0 for w in words]


def prepare_cells(
    df: pd.DataFrame,
    model_markers: list[str],
    normalizer: Normalizer,
    markers: list[str] | None = None,
    image: str | None = None,
    allow_phenotype: bool = True,
    source: str = "cells",
    rescale_offset_z: float = 0.0,
) -> CellSet:
    """Build a :class:`CellSet` from a cells table (see module doc). ``markers``: the table's marker
    columns (default: every numeric column that is not an id, position, label or shape)."""
    if len(df) == 0:
        raise ModelInputError(source, "no cells (empty image or table)")
    df = df.reset_index(drop=True)
    images, obj, xy = _images_objects_positions(df, image, source)
    tcol, scol, dcol = find_column(df, TYPE_COLS), find_column(df, STATUS_COLS), find_column(df, DONOR_COLS)
    cols = marker_columns(df) if markers is None else list(markers)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ModelInputError(source, f"marker columns not in the table: {missing}")
    index = {m: j for j, m in enumerate(model_markers)}
    used, unknown = _model_marker_columns(cols, index)
    if unknown:
        warnings.warn(
            f"{source}: {len(unknown)} marker(s) unknown to the model are ignored: {', '.join(map(str, unknown))}",
            stacklevel=2,
        )
    n, M = len(df), len(model_markers)
    z = np.zeros((n, M), np.float32)
    present = np.zeros((n, M), bool)
    phenotype = None
    if used:
        _scale_markers(z, present, df, used, index, normalizer, images, rescale_offset_z, source)
    elif allow_phenotype and tcol is not None:
        phenotype = _text_column(df, tcol)
    else:
        raise _no_shared_marker(source, cols, model_markers)
    return CellSet(
        image=np.asarray(images, dtype=object),
        object_id=obj,
        xy=xy,
        z=z,
        present=present,
        markers=list(model_markers),
        phenotype=phenotype,
        cell_type=_text_column(df, tcol),
        status=_text_column(df, scol),
        donor=_text_column(df, dcol),
        unknown_markers=unknown,
        used_markers=list(used),
        rank_bounds=normalizer.range_bounds(list(model_markers)) if normalizer.lo else None,
        level_edges=normalizer.level_edges(list(model_markers)) if normalizer.levels else None,
    )


def _images_objects_positions(df: pd.DataFrame, image: str | None, source: str):
    """Each cell's image (``image`` or ``"image"`` for a table without an image column), ``Object``
    (1, 2, ... for a table without one) and (x, y) position."""
    icol = find_column(df, IMAGE_COLS)
    images = (
        df[icol].astype(str).to_numpy() if icol else np.full(len(df), image or "image", dtype=object)
    )
    ocol = find_column(df, OBJECT_COLS)
    obj = df[ocol].to_numpy() if ocol else np.arange(1, len(df) + 1)
    xcol, ycol = find_column(df, X_COLS, source), find_column(df, Y_COLS, source)
    xy = df[[xcol, ycol]].to_numpy(np.float64)
    if not np.isfinite(xy).all():
        raise ModelInputError(source, "cell positions (x, y) contain NaN or inf")
    return images, obj, xy


def _model_marker_columns(cols: list[str], index: dict[str, int]) -> tuple[dict[str, str], list]:
    """The table column of each model marker the table has (canonical name -> column; the first column
    wins when aliases repeat a marker) and the columns the model does not know."""
    used: dict[str, str] = {}
    unknown = []
    for c in cols:
        canon = canonical_marker(c)
        if canon in index and canon not in used:
            used[canon] = c
        elif canon not in index:
            unknown.append(c)
    return used, unknown


def _text_column(df: pd.DataFrame, col: str | None) -> np.ndarray | None:
    return df[col].astype(str).to_numpy(dtype=object) if col else None


def _scale_markers(z, present, df, used, index, normalizer: Normalizer, images, rescale_offset_z: float,
                   source: str) -> None:
    """Normalise the ``used`` marker columns into their model columns of ``z`` and flag them ``present``
    where measured (both in place)."""
    canon = list(used)
    raw = df[[used[c] for c in canon]].to_numpy(np.float64)
    j = [index[c] for c in canon]
    # scale per image only when asked; the model's statistics otherwise
    if normalizer.scaling == "image":
        for im in pd.unique(images):
            sel = images == im
            z[np.ix_(sel, j)] = normalizer.transform(raw[sel], canon)
    else:
        z[:, j] = normalizer.transform(raw, canon)
        if rescale_offset_z > 0:
            _rescale_offset_images(z, raw, j, canon, images, normalizer, rescale_offset_z, source)
    present[:, j] = np.isfinite(raw)


def _no_shared_marker(source: str, cols: list[str], model_markers: list[str]) -> ModelInputError:
    have = ", ".join(map(str, cols[:12])) + (" ..." if len(cols) > 12 else "")
    return ModelInputError(
        source,
        f"the panel shares no marker with the model (table markers: {have or 'none'}; "
        f"model markers: {', '.join(model_markers[:12])}{' ...' if len(model_markers) > 12 else ''})",
    )


def _rescale_offset_images(z, raw, j, canon, images, normalizer, limit, source) -> None:
    """Rescale, on itself, each image whose values sit far from the model's training scale."""
    own = replace(normalizer, scaling="image")
    for im in pd.unique(images):
        sel = images == im
        if sel.sum() < 20:
            continue
        offset = float(np.median(np.abs(np.median(z[np.ix_(sel, j)], axis=0))))
        if offset > limit:
            warnings.warn(
                f"{source}: image {im}: intensities far from the model's training scale (median |z| "
                f"{offset:.1f} > {limit}); markers rescaled on this image",
                stacklevel=4,  # the caller of prepare_cells
            )
            z[np.ix_(sel, j)] = own.transform(raw[sel], canon)


def concat_cellsets(sets: list[CellSet]) -> CellSet:
    """One CellSet from several (same model markers); pairs are not carried over."""
    def cat(name):
        vals = [getattr(s, name) for s in sets]
        if all(v is None for v in vals):
            return None
        return np.concatenate([
            v if v is not None else np.full(len(s), "", dtype=object) for v, s in zip(vals, sets)
        ])

    return CellSet(
        image=cat("image"), object_id=cat("object_id"), xy=np.concatenate([s.xy for s in sets]),
        z=np.concatenate([s.z for s in sets]), present=np.concatenate([s.present for s in sets]),
        markers=sets[0].markers, phenotype=cat("phenotype"), cell_type=cat("cell_type"),
        status=cat("status"), donor=cat("donor"),
        unknown_markers=sorted({m for s in sets for m in s.unknown_markers}),
        used_markers=sorted({m for s in sets for m in s.used_markers}),
        rank_bounds=sets[0].rank_bounds, level_edges=sets[0].level_edges,
    )
