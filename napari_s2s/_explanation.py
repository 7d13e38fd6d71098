"""The "Cell explanation" panel: one cell's prediction, prompt, markers and partners.

It is filled by :meth:`napari_s2s._explain_view.CellExplainer.explain_cell` (a click on the mask, a
selected label, or a click on a partner in this panel) with a plain dict (see :meth:`show_cell`).
"""

from __future__ import annotations

import html

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QFont
from qtpy.QtWidgets import (
    QGridLayout, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QProgressBar, QSizePolicy, QTextBrowser,
    QWidget,
)

from spatial2sentence.aliases import canonical_marker

from ._controls import fit_width, scroll_body
from ._layers import NEGATIVE_COLOR, POSITIVE_COLOR

STRUCTURE_WORDS = {"cell", ":", ";", "near", "far", "task", "answer", "type", "status", "[BOS]", "[EOS]"}


def prob_bar(value: float, color: str, text: str | None = None) -> QWidget:
    """A probability bar in ``color`` with its value written beside it (not on it: white or black text
    over a bar that is half light, half dark is unreadable on one half)."""
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    row.setSpacing(6)
    bar = QProgressBar()
    bar.setRange(0, 1000)
    v = 0.0 if value is None or not np.isfinite(value) else float(value)
    bar.setValue(int(round(v * 1000)))
    bar.setTextVisible(False)
    bar.setMinimumHeight(14)
    bar.setMaximumHeight(16)
    bar.setStyleSheet("QProgressBar{border:1px solid #555; border-radius:3px; background:#262930;}"
                      f"QProgressBar::chunk{{background:{color};}}")
    label = QLabel(text if text is not None else f"{v:.2f}")
    label.setMinimumWidth(label.fontMetrics().horizontalAdvance("0.000"))
    label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
    row.addWidget(bar, 1)
    row.addWidget(label)
    box.bar, box.label = bar, label
    return box


class ProbBars(QWidget):
    """Rows of a name and its probability bar (:func:`prob_bar`): a cell's types, an image's status."""

    def __init__(self, name_width: int = 0):
        super().__init__()
        self.name_width = name_width
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setVerticalSpacing(2)

    def set_rows(self, rows) -> None:
        """``rows``: (name, probability, colour) each, in the order shown."""
        while self.grid.count():
            w = self.grid.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        for r, (name, value, color) in enumerate(rows):
            label = QLabel(name)
            if self.name_width:
                label.setMinimumWidth(self.name_width)
            self.grid.addWidget(label, r, 0)
            self.grid.addWidget(prob_bar(value, color), r, 1)


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


def display_names(markers) -> dict[str, str]:
    """The model's canonical marker name -> the name the user gave (the Markers field of the run)."""
    return {canonical_marker(m): m for m in markers}


def display_word(word: str, names: dict[str, str] | None) -> str:
    """A prompt word in the user's marker names: ``CDH1`` -> ``CDH``, ``CDH1:12`` -> ``CDH:12`` when the
    panel calls the marker CDH (``names``: the model's canonical name -> the user's)."""
    if not names:
        return word
    base, sep, level = word.partition(":")
    if base in names:
        return names[base] + sep + level
    return word


ROLE_WORDS = {"near": "similar neighbour", "far": "dissimilar distant cell",
              "around": "the nearest cells on average"}
ROLE_NAMES = {"positive": "similar neighbour", "negative": "dissimilar distant cell"}
NIL_MEANING = ("nil: none of the model's markers is measurably present in this cell (every one is below "
               "the model's threshold)")


def level_text(value) -> str:
    """A measured marker level (mean counts in the cell) as 3 significant digits; '' when unknown."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    return f"{v:.3g}" if np.isfinite(v) else ""


def prompt_html(text: str, tokens: list[dict] | None, names: dict[str, str] | None = None,
                levels: list[dict] | None = None) -> str:
    """The prompt as HTML for a reader: one sentence a line, each word shaded by its attribution.

    Marker words in the user's marker names (the model's name in the tooltip where they differ), each
    followed by the measured level of that marker in that sentence's cell (``levels[k]``: the model's
    canonical marker name -> mean counts, for sentence k: the cell, then its partners in prompt order).
    The sentence openers say what they mean: ``this cell``, ``similar neighbour``, ``dissimilar distant
    cell`` (the model's words ``cell`` / ``near`` / ``far`` in the tooltip); the task line (template
    words) is left out; ``nil`` is explained under the prompt."""
    words = text.split()
    scores = align_scores(words, tokens)
    if "task" in words:  # "... ; task type answer": the question, not part of what the cell shows
        cut = words.index("task")
        words, scores = words[:cut], scores[:cut]
    finite = [abs(s) for s in scores if s is not None and np.isfinite(s)]
    vmax = max(finite) if finite else 0.0
    lines, cur = [], []
    # sentence: which cell's levels go with the current line (0 the cell, k its k-th partner; None for
    # lines about no single cell, e.g. "around"); opener: the words before ':' (who and where)
    sentence, partners_seen, opener = None, 0, True
    has_nil = False
    for w, s in zip(words, scores):
        if w in ("[BOS]", "[EOS]"):
            continue
        tips = [f"attribution {s:+.3f} ({'for' if s > 0 else 'against'} the call)"] \
            if s is not None and np.isfinite(s) and s != 0 else []
        level = ""
        if opener:
            style = "color:#9aa0a6;"
            shown = w
            if not cur:  # the line's first word says whose line it is
                if w in ("near", "far"):
                    partners_seen += 1
                sentence = 0 if w == "cell" else partners_seen if w in ("near", "far") else None
            if w == "cell":
                shown = "this cell"
            elif w in ROLE_WORDS:
                shown = ROLE_WORDS[w]
                style = f"color:{POSITIVE_COLOR if w == 'near' else NEGATIVE_COLOR};font-weight:bold;"
            if w == "around":
                style = "color:#c0c0c0;font-weight:bold;"
            if shown != w:
                tips.append(f"model's word: {w}")
            if w == ":":
                opener = False
        elif w == ";":
            style, shown = "color:#9aa0a6;", w
        else:
            style = "color:#ffffff;"
            shown = display_word(w, names)
            base, _, bin_ = w.partition(":")
            if shown != w:
                tips.append(f"model's name: {w}")
            if bin_:
                tips.append(f"the model's level word: bin {bin_}")
            if w == "nil":
                has_nil = True
                tips.append(NIL_MEANING)
            elif levels and sentence is not None and sentence < len(levels):
                lv = level_text(levels[sentence].get(base))
                if lv:
                    level = f"<span style='color:#9aa0a6;font-size:11px;'>&#8201;{lv}</span>"
                    tips.append(f"measured level {lv} (mean counts in the cell)")
        bg = shade(s, vmax)
        title = f" title='{html.escape('; '.join(tips), quote=True)}'" if tips else ""
        cur.append(f"<span style='{style}background:{bg};padding:1px 2px;'{title}>{html.escape(shown)}</span>"
                   + level)
        if w == ";" and not opener:
            lines.append(" ".join(cur))
            cur = []
            opener = True
    if cur:
        lines.append(" ".join(cur))
    if has_nil:
        lines.append(f"<span style='color:#9aa0a6;font-style:italic;'>{html.escape(NIL_MEANING)}</span>")
    return ("<div style='font-family:monospace;font-size:13px;line-height:150%;'>"
            + "<br>".join(lines) + "</div>")


def level_word(canon: str, info: dict) -> str:
    """``high INS (12.3)``: the user's name of a marker, how its level in the cell ranks among the image's
    cells (top third high, bottom third low) and the measured level."""
    names = info.get("display_names") or {}
    name = names.get(canon, canon)
    q = (info.get("percentiles") or {}).get(canon)
    adj = "" if q is None or not np.isfinite(q) else ("high " if q >= 2 / 3 else "low " if q < 1 / 3 else "medium ")
    lv = level_text(((info.get("levels") or [{}])[0] or {}).get(canon))
    return f"{adj}{name}" + (f" ({lv})" if lv else "")


def _article(word: str) -> str:
    return "an" if str(word)[:1].lower() in "aeiou" else "a"


def plain_summary(info: dict) -> str:
    """One plain sentence: why the cell got its type.

    ``Called beta (probability 0.82) mainly for high INS (12.3) and high SYP (8.1); a similar neighbour
    10 um north, also beta, supported it.`` From the attributions when they are there (the two markers
    that most drove the call, the partner that mattered most); before that, the cell's strongest marker
    words, saying the reasons are still being computed."""
    pred, p = info.get("predicted"), info.get("probability")
    if not pred:
        return "No call: the model gave this cell no type."
    ptxt = f" (probability {p:.2f})" if p is not None and np.isfinite(p) else ""
    attr = info.get("attribution")
    if attr and attr.get("markers"):
        ms = sorted(attr["markers"], key=lambda m: -float(m.get("score", 0)))
        pos = [m for m in ms if float(m.get("score", 0)) > 0][:2]
        why = ("mainly for " + " and ".join(level_word(canonical_marker(str(m["marker"])), info) for m in pos)
               if pos else "with no marker clearly for it")
        top = max((abs(float(m.get("score", 0))) for m in ms), default=0.0)
        parts = [q for q in info.get("partners", []) if q.get("score") is not None and np.isfinite(q["score"])]
        if parts:
            best = max(parts, key=lambda q: abs(q["score"]))
            if abs(best["score"]) < 0.1 * top:
                rest = "its partner cells barely mattered"
            else:
                ct = best.get("cell_type")
                kind = f"also {ct}" if ct == pred else (f"{_article(ct)} {ct} cell" if ct else "not called")
                rest = (f"a {ROLE_NAMES.get(best.get('role'), 'partner')} "
                        f"{best.get('distance_um', float('nan')):.0f} um {best.get('direction', '')}, {kind}, "
                        f"{'supported it' if best['score'] > 0 else 'argued against it'}")
        else:
            rest = "no partner cell counted"
        return f"Called {pred}{ptxt} {why}; {rest}."
    anchor = [a.partition(":")[0] for a in info.get("anchor_markers", []) if a != "nil"][:3]
    if not anchor:
        return f"Called {pred}{ptxt}; {NIL_MEANING.split(': ', 1)[1]}."
    strongest = ", ".join(level_word(a, info) for a in anchor)
    return f"Called {pred}{ptxt}; its strongest markers: {strongest} (which drove the call: see below)."


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
        self.summary = QLabel("")  # one plain sentence: why this type
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("font-size:13px;padding:2px 0;")
        lay.addWidget(self.summary)
        self.bars = ProbBars(name_width=90)
        lay.addWidget(self.bars)
        lay.addWidget(self._heading("What the model read (one cell a line, its measured level after each "
                                    "marker; red: drove the call, blue: against it)"))
        self.prompt = QTextBrowser()
        self.prompt.setOpenLinks(False)
        # a whole prompt (anchor + 6 partner sentences, one a line) without scrolling the box
        self.prompt.setMinimumHeight(14 * self.prompt.fontMetrics().lineSpacing() + 24)
        self.prompt.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        lay.addWidget(self.prompt, 4)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color:#c0c0c0;font-style:italic;")
        lay.addWidget(self.note)
        lay.addWidget(self._heading("Markers that mattered most (level in this cell; attribution)"))
        self.markers = QLabel("")
        self.markers.setWordWrap(True)
        self.markers.setTextFormat(Qt.RichText)
        lay.addWidget(self.markers)
        lay.addWidget(self._heading("Partners (click one to explain it; lines on the image)"))
        self.partners = QListWidget()
        self.partners.setMinimumHeight(6 * self.partners.fontMetrics().lineSpacing() + 12)
        self.partners.setMaximumHeight(12 * self.partners.fontMetrics().lineSpacing() + 12)
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
        self.summary.setText(plain_summary(info))
        probs = sorted(info.get("probabilities", {}).items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1))
        colors = info.get("colors", {})
        self.bars.set_rows([(lab, v, colors.get(lab, "#808080")) for lab, v in probs[:6]])
        attr = info.get("attribution")
        names = info.get("display_names") or {}
        self.prompt.setHtml(prompt_html(info.get("text", ""), attr.get("tokens") if attr else None, names,
                                        info.get("levels")))
        self.note.setText(info.get("note", ""))
        self.note.setVisible(bool(info.get("note")))
        if attr and attr.get("markers"):
            ms = sorted(attr["markers"], key=lambda m: -abs(float(m.get("score", 0))))[:8]
            vmax = max(abs(float(m.get("score", 0))) for m in ms) or 1.0
            self.markers.setText(" ".join(
                f"<span style='background:{shade(float(m['score']), vmax)};padding:2px;'>"
                f"{html.escape(level_word(canonical_marker(str(m['marker'])), info))} "
                f"{float(m['score']):+.2f}</span>"
                for m in ms))
        else:
            anchor = [a.partition(":")[0] for a in info.get("anchor_markers", []) if a != "nil"]
            self.markers.setText("strongest in this cell (attributions not computed yet): "
                                 + html.escape(", ".join(level_word(a, info) for a in anchor)))
        self.partners.clear()
        for part in info.get("partners", []):
            role = part.get("role", "")
            sc = part.get("score")
            sc_txt = ""
            if sc is not None and np.isfinite(sc):
                sc_txt = f"; {'supported the call' if sc > 0 else 'argued against it'} ({sc:+.2f})"
            text = (f"{ROLE_NAMES.get(role, role)}: cell {part['Object']}, "
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
