"""Can this model read this panel? Panel coverage, the refusal below a measured threshold, and the
confidence rules for what is shown (cells with no signal, an image status that does not beat chance).

Why: a model reads marker words; markers it never saw are ignored. With 1 of its 37 markers present,
every sentence of the default model is the single word ``nil`` and every cell got the majority type
(acinar) with a clinical status in bold. Coverage is the fraction of the model's markers that the
image or table measures (after alias matching: ``CD8a`` meets ``CD8A``); below the model's
``min_marker_fraction`` prediction is refused unless the caller explicitly allows a partial panel.
The default threshold comes from ``benchmarks/coverage.py`` (held-out accuracy against the fraction of
the panel present, random panel subsets): see ``DEFAULT_MIN_MARKER_FRACTION``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .aliases import canonical_marker
from .errors import ModelInputError

# The rule for a model folder WITHOUT check cells: benchmarks/coverage.py (default model, 6 held-out
# semi-synthetic images, 4 random panel subsets per size) found that the mean accuracy reaches half the
# way from the majority class (0.546) to the full panel (0.871) only from 20 of 37 markers (0.541) on;
# one random third of the panel gave 0.37 to 0.68. Counting markers is that unreliable, so a folder
# with check cells (the default model's) is judged by spatial2sentence.check_cells.panel_check instead.
DEFAULT_MIN_MARKER_FRACTION = 0.54
# an image's clinical status is shown as a call only when its probability beats chance (1 / classes)
# by this much; otherwise "uncertain"
DEFAULT_STATUS_MARGIN = 0.15


# a sample of labelled held-out cells stored in a model folder: the model's accuracy with exactly the
# markers an input carries is measured on them (see spatial2sentence.check_cells)
CHECK_CELLS = "panel_check.csv.gz"
# markers every panel carries (nuclear stains): they say nothing about the cell type, so they do not
# count towards coverage
NUCLEAR = ("DNA1", "DNA2", "DNA3", "DNA", "H3", "HISTONEH3", "IR191", "IR193", "HOECHST", "DAPI")


class PanelCoverageError(ModelInputError):
    """The image or table carries too few of the model's markers for a trustworthy prediction."""


@dataclass
class PanelCoverage:
    """Which of the model's markers a panel carries."""

    present: list[str]  # the model's markers found (canonical names)
    missing: list[str]  # the model's markers absent
    unknown: list[str] = field(default_factory=list)  # the panel's markers the model does not know
    threshold: float = DEFAULT_MIN_MARKER_FRACTION
    trained_on: str = ""
    # measured on the model's check cells with exactly the present markers (None: no check cells, or
    # the full panel is present): accuracy, full-panel accuracy, majority baseline, required accuracy
    check: dict | None = None

    @property
    def fraction(self) -> float:
        total = len(self.present) + len(self.missing)
        return len(self.present) / total if total else 0.0

    @property
    def ok(self) -> bool:
        if self.check is not None:
            return self.check["accuracy"] >= self.check["required"]
        return self.fraction >= self.threshold

    def summary(self) -> str:
        n, m = len(self.present), len(self.present) + len(self.missing)
        shown = ", ".join(self.present[:12]) + (", ..." if n > 12 else "")
        text = f"{n} of {m} model markers present ({shown or 'none'})"
        if self.trained_on:
            text += f"; the model was trained on {self.trained_on}"
        return text

    def refusal(self) -> str:
        if self.check is not None:
            c = self.check
            why = (f"with only these markers the model types {c['accuracy']:.0%} of its held-out check cells "
                   f"correctly ({c['full']:.0%} with its full panel, {c['majority']:.0%} by always naming the "
                   f"commonest type), below the {c['required']:.0%} it needs")
        else:
            why = f"{self.fraction:.0%} of the panel is below the {self.threshold:.0%} this model needs"
        return (f"{self.summary()}; {why}, so its cell types would be guesses. Train a model on your own "
                "panel (s2s train --table, or the Train model widget), or allow a partial panel explicitly "
                "(--allow-partial-panel / the checkbox)")

    def to_dict(self) -> dict:
        return {"present": self.present, "missing": self.missing, "unknown": self.unknown,
                "fraction": round(self.fraction, 4), "threshold": self.threshold, "ok": self.ok,
                "trained_on": self.trained_on, "check": self.check}


def panel_coverage(model_markers: list[str], panel: list[str], threshold: float = DEFAULT_MIN_MARKER_FRACTION,
                   trained_on: str = "") -> PanelCoverage:
    """Coverage of ``model_markers`` (canonical names) by the marker names of ``panel``."""
    model_markers = [m for m in model_markers if m.upper() not in NUCLEAR] or list(model_markers)
    known = set(model_markers)
    found, unknown = set(), []
    for name in panel:
        canon = canonical_marker(str(name))
        if canon in known:
            found.add(canon)
        else:
            unknown.append(str(name))
    present = [m for m in model_markers if m in found]
    missing = [m for m in model_markers if m not in found]
    return PanelCoverage(present, missing, unknown, float(threshold), trained_on)


def status_is_confident(probability: float, n_classes: int, margin: float = DEFAULT_STATUS_MARGIN) -> bool:
    """Whether an image's clinical-status probability beats chance by ``margin``."""
    return n_classes > 0 and probability == probability and probability >= 1.0 / n_classes + margin


def required_accuracy(full: float, majority: float) -> float:
    """The accuracy a partial panel must reach: half the way from always naming the commonest type to
    the full panel (the rule behind ``benchmarks/coverage.py``'s threshold)."""
    return majority + 0.5 * (full - majority)


# --------------------------------------------------------------------------------------- calibration
def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """Class probabilities (rows) as if the logits had been divided by ``temperature`` (temperature
    scaling; rows with NaN stay NaN). ``log p`` differs from the logits by one constant per row, so this
    needs the probabilities only."""
    if temperature == 1.0 or p.size == 0:
        return p
    out = p.copy()
    ok = np.isfinite(p).all(1)
    lp = np.log(np.clip(p[ok], 1e-12, 1.0)) / temperature
    lp -= lp.max(1, keepdims=True)
    e = np.exp(lp)
    out[ok] = (e / e.sum(1, keepdims=True)).astype(p.dtype)
    return out


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of the true classes ``y`` (indices)."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))

    def nll(t):
        q = apply_temperature(p, t)
        return -np.mean(np.log(np.clip(q[np.arange(len(y)), y], 1e-12, 1.0)))

    return float(grid[int(np.argmin([nll(t) for t in grid]))])


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error (confidence vs accuracy in ``bins`` equal-width bins, weighted by
    cell count) and the bins themselves (a reliability diagram's points)."""
    conf, pred = p.max(1), p.argmax(1)
    hit = pred == y
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            c, a = float(conf[sel].mean()), float(hit[sel].mean())
            ece += sel.mean() * abs(c - a)
            rows.append({"lo": float(lo), "hi": float(hi), "confidence": c, "accuracy": a, "n": int(sel.sum())})
    return float(ece), rows
