"""The "Cell explanation" panel: one cell's prediction, prompt, markers and partners.

It is filled by :meth:`napari_s2s._widget.AnnotateCellsWidget.explain_cell` (a click on the mask, a
selected label, or a click on a partner in this panel) with a plain dict (see :meth:`show`).
"""

from __future__ import annotations

import html

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QFont
from qtpy.QtWidgets import (
    QGridLayout, QLabel, QListWidget, QListWidgetItem, QProgressBar, QSizePolicy, QTextBrowser,
    QWidget,
)

from ._controls import fit_width, scroll_body
from ._layers import NEGATIVE_COLOR, POSITIVE_COLOR

STRUCTURE_WORDS = {"cell", ":", ";", "near", "far", "task", "answer", "type", "status", "[BOS]", "[EOS]"}


def prob_bar(value: float, color: str, text: str | None = None) -> QProgressBar:
    bar = QProgressBar()
    bar.setRange(0, 1000)
    v = 0.0 if value is None or not np.isfinite(value) else float(value)
    bar.setValue(int(round(v * 1000)))
    bar.setTextVisible(True)
    bar.setFormat(text if text is not None else f"{v:.2f}")
    bar.setMinimumHeight(18)
    bar.setMaximumHeight(20)
    fg = "#000000" if QColor(color).lightness() > 140 else "#ffffff"
    bar.setStyleSheet(
        "QProgressBar{border:1px solid #555; border-radius:3px; background:#262930; text-align:center;"
        f"color:#ffffff;}} QProgressBar::chunk{{background:{color}; color:{fg};}}"
    )
    return bar


def shade(score: float, vmax: float) -> str:
    """CSS background for a word: red (for the prediction) or blue (against), by |score| / vmax."""
    if score is None or not np.isfinite(score) or vmax <= 0 or score == 0:
        return "transparent"
    a = min(1.0, abs(score) / vmax) * 0.85
    return f"rgba(230,57,70,{a:.2f})" if score > 0 else f"rgba(69,123,232,{a:.2f})"


def align_scores(words: list[str], tokens: list[dict] | None) -> list[float | None]:
    """Attribution score of each prompt word: by position when the lists match, else greedily by token
    text in order."""
    if not tokens:
        return [None] * len(words)
    toks = [str(t.get("token")) for t in tokens]
    scores = [float(t.get("score", 0.0)) for t in tokens]
    if toks == words:
        return scores
    out, j = [], 0
    for w in words:
        k = j
        while k < len(toks) and toks[k] != w:
            k += 1
        if k < len(toks):
            out.append(scores[k])
            j = k + 1
        else:
            out.append(None)
    return out


# template words the model needs but a reader does not: the task line is not shown
HIDDEN_WORDS = {"task", "type", "status", "answer"}


def display_word(word: str, names: dict[str, str] | None) -> str:
    """A prompt word in the user's marker names: ``CDH1`` -> ``CDH``, ``CDH1:12`` -> ``CDH:12`` when the
    panel calls the marker CDH (``names``: the model's canonical name -> the user's)."""
    if not names:
        return word
    base, sep, level = word.partition(":")
    if base in names:
        return names[base] + sep + level
    return word


def prompt_html(text: str, tokens: list[dict] | None, names: dict[str, str] | None = None) -> str:
    """The prompt as HTML, one sentence per line, each word shaded by its attribution, in the user's
    marker names (the model's name in the tooltip where they differ); ``nil`` explained; the task line
    (template words) left out."""
    words = text.split()
    scores = align_scores(words, tokens)
    if "task" in words:  # "... ; task type answer": the question, not part of what the cell shows
        cut = words.index("task")
        words, scores = words[:cut], scores[:cut]
    finite = [abs(s) for s in scores if s is not None and np.isfinite(s)]
    vmax = max(finite) if finite else 0.0
    lines, cur = [], []
    for w, s in zip(words, scores):
        if w in ("[BOS]", "[EOS]"):
            continue
        style = "color:#9aa0a6;" if w in STRUCTURE_WORDS or w.startswith(("<", ">")) else "color:#ffffff;"
        if w in ("near",):
            style = f"color:{POSITIVE_COLOR};font-weight:bold;"
        elif w in ("far",):
            style = f"color:{NEGATIVE_COLOR};font-weight:bold;"
        bg = shade(s, vmax)
        shown = display_word(w, names)
        tips = [f"score {s:+.3f}"] if s is not None and np.isfinite(s) else []
        if shown != w:
            tips.append(f"model's name: {w}")
        if w == "nil":
            tips.append("nil: no marker of the model's panel is measurably present in this cell")
        title = f" title='{html.escape('; '.join(tips))}'" if tips else ""
        cur.append(f"<span style='{style}background:{bg};padding:1px 2px;'{title}>{html.escape(shown)}</span>")
        if w == ";":
            lines.append(" ".join(cur))
            cur = []
    if cur:
        lines.append(" ".join(cur))
    return ("<div style='font-family:monospace;font-size:13px;line-height:150%;'>"
            + "<br>".join(lines) + "</div>")


class ExplanationPanel(QWidget):
    """Shows one cell; ``partner_clicked(object_id)`` asks the owner to move to a partner."""

    partner_clicked = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.current: dict | None = None
        lay = scroll_body(self)  # the panel scrolls rather than squeezing its parts into each other
        self.title = QLabel("Click a cell of the annotated mask")
        f = QFont(self.title.font())
        f.setPointSize(max(f.pointSize() + 2, 12))
        f.setBold(True)
        self.title.setFont(f)
        self.title.setWordWrap(True)
        lay.addWidget(self.title)
        self.bars_box = QWidget()
        self.bars = QGridLayout(self.bars_box)
        self.bars.setContentsMargins(0, 0, 0, 0)
        self.bars.setVerticalSpacing(2)
        lay.addWidget(self.bars_box)
        lay.addWidget(self._heading("Prompt (each sentence one line; red: drove the call, blue: against)"))
        self.prompt = QTextBrowser()
        self.prompt.setOpenLinks(False)
        # a whole prompt (anchor + 6 partner sentences, one a line) without scrolling the box
        self.prompt.setMinimumHeight(10 * self.prompt.fontMetrics().lineSpacing() + 24)
        self.prompt.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        lay.addWidget(self.prompt, 2)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color:#c0c0c0;font-style:italic;")
        lay.addWidget(self.note)
        lay.addWidget(self._heading("Top markers"))
        self.markers = QLabel("")
        self.markers.setWordWrap(True)
        self.markers.setTextFormat(Qt.RichText)
        lay.addWidget(self.markers)
        lay.addWidget(self._heading("Partners (click one to explain it; lines on the image)"))
        self.partners = QListWidget()
        self.partners.setMinimumHeight(6 * self.partners.fontMetrics().lineSpacing() + 12)
        self.partners.setWordWrap(True)
        self.partners.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.partners.itemClicked.connect(self._on_partner)
        lay.addWidget(self.partners, 1)
        self.timing = QLabel("")
        self.timing.setStyleSheet("color:#9aa0a6;")
        lay.addWidget(self.timing)
        fit_width(self, 380)

    @staticmethod
    def _heading(text: str) -> QLabel:
        lab = QLabel(text)
        lab.setWordWrap(True)
        f = QFont(lab.font())
        f.setBold(True)
        lab.setFont(f)
        return lab

    def _on_partner(self, item: QListWidgetItem):
        obj = item.data(Qt.UserRole)
        if obj is not None:
            self.partner_clicked.emit(obj)

    # ---------------------------------------------------------------------------------------------
    def show_cell(self, info: dict):
        """``info``: ``object``, ``image``, ``predicted``, ``probability``, ``probabilities`` {type: p},
        ``colors`` {type: hex}, ``text`` (prompt), ``partners`` (dicts with Object, role, distance_um,
        direction, cell_type, score), ``attribution`` (dict or None), ``note`` (str), ``seconds``."""
        self.current = info
        obj, pred, p = info["object"], info.get("predicted"), info.get("probability")
        ptxt = f" ({p:.2f})" if p is not None and np.isfinite(p) else ""
        self.title.setText(f"Cell {obj} of {info.get('image', '')}: {pred or 'unassigned'}{ptxt}")
        while self.bars.count():
            w = self.bars.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        probs = sorted(info.get("probabilities", {}).items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1))
        for r, (lab, v) in enumerate(probs[:6]):
            name = QLabel(lab)
            name.setMinimumWidth(90)
            self.bars.addWidget(name, r, 0)
            self.bars.addWidget(prob_bar(v, info.get("colors", {}).get(lab, "#808080")), r, 1)
        attr = info.get("attribution")
        names = info.get("display_names") or {}
        self.prompt.setHtml(prompt_html(info.get("text", ""), attr.get("tokens") if attr else None, names))
        self.note.setText(info.get("note", ""))
        self.note.setVisible(bool(info.get("note")))
        if attr and attr.get("markers"):
            ms = sorted(attr["markers"], key=lambda m: -abs(float(m.get("score", 0))))[:8]
            vmax = max(abs(float(m.get("score", 0))) for m in ms) or 1.0
            self.markers.setText(" ".join(
                f"<span style='background:{shade(float(m['score']), vmax)};padding:2px;'>"
                f"{html.escape(names.get(str(m['marker']), str(m['marker'])))} {float(m['score']):+.2f}</span>"
                for m in ms))
        else:
            anchor = info.get("anchor_markers", [])
            self.markers.setText("ranked by expression (no attributions): "
                                 + html.escape(" > ".join(display_word(a, names) for a in anchor)))
        self.partners.clear()
        for part in info.get("partners", []):
            role = part.get("role", "")
            sc = part.get("score")
            sc_txt = f", score {sc:+.2f}" if sc is not None and np.isfinite(sc) else ""
            text = (f"{'similar neighbour' if role == 'positive' else 'dissimilar distant cell'}: cell {part['Object']}, "
                    f"{part.get('distance_um', float('nan')):.1f} um {part.get('direction', '')}, "
                    f"{part.get('cell_type') or 'unassigned'}{sc_txt}")
            item = QListWidgetItem(text)
            item.setForeground(QColor(POSITIVE_COLOR if role == "positive" else NEGATIVE_COLOR))
            item.setData(Qt.UserRole, part["Object"])
            self.partners.addItem(item)
        if info.get("seconds") is not None:
            self.timing.setText(f"explained in {info['seconds'] * 1000:.0f} ms")

    def prompt_text(self) -> str:
        return self.prompt.toPlainText()
