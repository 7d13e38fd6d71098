"""Cell explanations of the Annotate cells dock: a click on a cell of the annotated mask (or a selected
label, or a partner clicked in the panel) fills the "Cell explanation" panel (:mod:`._explanation`)
and draws the cell's partners on the image.

The prompt, probabilities and partners appear at once, with the first word shading (integrated
gradients, one 16-point pass, :mod:`._explain`) computed in the click while that stays quick; the refined
shading follows from a worker. The partner lines on the image are drawn, and the worker computes, once
the panel has painted the cell (see :data:`PAINT_WAIT_MS`). The panel is docked as a tab beside
Annotate cells on first use. One cell's attributions go into the dock widget's cache
(``owner._attributions``), which the attribution map shares; the explainer reads the run's state from
the widget (``annotation``, ``mask_layer``, ``viewer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import threading
import time
from collections import deque

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, QObject, QTimer

from spatial2sentence.aliases import canonical_marker
from spatial2sentence.errors import S2SInputError, first_line

from . import _explain, _layers
from ._controls import dock_of, is_deleted, one_line
from ._explain import AttributionsUnavailable
from ._explanation import ExplanationPanel, display_names
from ._inputs import meta
from ._results import find_layer

if TYPE_CHECKING:  # the core (torch) is not imported when napari builds the widget
    from spatial2sentence.annotate import Annotation


# the first shading is computed in the click itself while it takes less than this: from a worker it
# arrived only after the click's canvas repaint (~0.1 s under Xvfb; click -> shaded words median 0.196-
# 0.213 s, benchmarks/plugin.py), inline with the panel it is drawn in the same repaint. A slower pass
# (a large model, a busy machine: the median of the last 3 first passes, inline or in the worker, above
# the limit; one slow pass, such as the first after a load, does not) sends the following clicks' first
# passes back to the worker, and a faster median brings them back.
INLINE_FIRST_PASS_S = 0.12

# What a click starts besides the panel waits until the panel has painted the clicked cell:
# * the partner lines: changing the Shapes layer makes napari recompute the viewer's dims for every layer
#   and vispy redraw the whole canvas, which on a 37-channel image under Xvfb made the repaint that shows
#   the shaded words 2-3x slower (probe: prompt painted 0.08-0.13 s after the click without the lines,
#   0.19-0.30 s with them, on a busy 2-core machine); they are drawn in the next round of the event loop;
# * the refinement worker: it starts at once but computes only after that paint (a threading.Event), so
#   its integrated gradients do not take the cores the paint needs.
# If the panel does not paint (hidden behind another tab), both go ahead after PAINT_WAIT_MS.
PAINT_WAIT_MS = 150


class _PaintWatch(QObject):
    """The first paint of a watched widget after a click: sets that click's ``painted`` event (its
    worker waits on it) and calls ``callback`` through the event loop (never inside the paint); later
    paints (scrolling, hovering) do nothing."""

    def __init__(self, callback):
        super().__init__()
        self.callback = callback
        self.painted: threading.Event | None = None

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Paint and self.painted is not None and not self.painted.is_set():
            self.painted.set()
            QTimer.singleShot(0, self.callback)
        return False


def apply_attribution(info: dict, att: dict) -> None:
    """Put a cell's attribution into its panel ``info``: the partners' scores, the note cleared."""
    info["attribution"] = att
    scores = {str(p.get("object", p.get("Object"))): p.get("score") for p in att.get("partners", [])}
    for p in info["partners"]:
        sc = scores.get(str(p["Object"]))
        p["score"] = None if sc is None else float(sc)
    info["note"] = ""


class CellExplainer:
    """The Cell explanation panel (``panel``, docked in ``dock``) and what fills it."""

    def __init__(self, owner):
        self.owner = owner
        self.panel: ExplanationPanel | None = None
        self.dock = None
        self._levels_cache: tuple = (None,)
        self._table_cache: tuple = (None,)
        self.first_pass_seconds: deque = deque(maxlen=3)  # the last first passes (INLINE_FIRST_PASS_S)
        self._pending_lines: tuple | None = None  # (annotation, obj, partners, table) to draw after a paint
        self._paint_watch: _PaintWatch | None = None

    # ------------------------------------------------------------------------------------- clicks
    def watch(self, layer) -> None:
        """Explain the cells of ``layer`` (the annotated mask) on a click or a selected label."""
        if getattr(layer, "_s2s_click", False):
            return
        layer._s2s_click = True
        layer.mouse_drag_callbacks.append(self._on_mask_click)
        layer.events.selected_label.connect(self._on_selected_label)

    def _on_mask_click(self, layer, event):
        if getattr(event, "button", 1) not in (1, None) or layer.mode not in ("pan_zoom", "pick"):
            return
        start = np.asarray(event.position)
        yield
        moved = False
        while event.type == "mouse_move":
            moved = moved or np.linalg.norm(np.asarray(event.position) - start) > 2 * float(np.max(layer.scale))
            yield
        if moved:
            return
        value = layer.get_value(event.position, view_direction=event.view_direction,
                                dims_displayed=event.dims_displayed, world=True)
        if value is not None and int(value) > 0:
            self.explain_cell(int(value))

    def _on_selected_label(self, event=None):
        owner = self.owner
        if owner.mask_layer is None or owner.annotation is None:
            return
        v = int(owner.mask_layer.selected_label)
        if v > 0 and str(v) in set(owner.annotation.table["Object"].astype(str)):
            self.explain_cell(v)

    def ensure_panel(self) -> ExplanationPanel:
        """The explanation panel, docked as a tab beside the widget's dock on first use, then raised.

        napari's ``add_dock_widget(..., tabify=True)`` tabifies with the last dock of the right area
        (another plugin's, or Batch annotate opened after this one); Qt's own ``tabifyDockWidget`` on
        the two real dock widgets (found through Qt's parent chain: the viewer handed to a widget from
        the Plugins menu is a ``PublicOnlyProxy`` whose return values Qt does not accept) then puts the
        explanation beside Annotate cells."""
        if self.panel is None:
            self.panel = ExplanationPanel()
            self.panel.partner_clicked.connect(lambda o: self.explain_cell(int(o)))
            window = getattr(self.owner.viewer, "window", None)  # a bare ViewerModel has none
            if window is not None:
                window.add_dock_widget(self.panel, name="Cell explanation", area="right", tabify=True,
                                       add_vertical_stretch=False)
                self.dock = dock_of(self.panel)
                mine = dock_of(self.owner)
                main = mine.parentWidget() if mine is not None else None
                if (main is not None and self.dock is not None and hasattr(main, "tabifyDockWidget")
                        and self.dock not in main.tabifiedDockWidgets(mine)):
                    main.tabifyDockWidget(mine, self.dock)
        if self.dock is not None:
            self.dock.show()
            self.dock.raise_()
        return self.panel

    # ------------------------------------------------------------------------------------- one cell
    def explain_cell(self, obj: int, attributions: str = "async") -> dict | None:
        """Fill the explanation panel with cell ``obj`` and draw its partners; returns the info dict.

        ``attributions="async"``: the first shading is computed here while it is quick (else in the
        worker) and the refined one follows from a worker; ``"sync"``: the whole attribution is computed
        before returning; ``"none"``: no shading."""
        ann = self.owner.annotation
        if ann is None:
            return None
        t0 = time.perf_counter()
        try:
            prompt = ann.model.prompts_for(self.owner.prepared_cells(), [obj], markers=ann.markers)[0]
        except S2SInputError as err:
            self.owner.notify("warning", one_line(err))
            return None
        table = self.table_by_object()
        info = self._cell_info(ann, obj, prompt, table)
        cached = self.owner._attributions.get(str(obj))
        if cached is not None:
            apply_attribution(info, cached)
        elif attributions == "sync":
            try:
                apply_attribution(info, self.explain_one(obj))
            except AttributionsUnavailable as err:
                info["note"] = str(err)
        elif attributions == "async":
            info["note"] = "computing attributions…"
        first = None
        if attributions == "async" and cached is None and self.inline_first_pass:
            try:
                first = self.first_pass(obj, ann)
            except AttributionsUnavailable as err:
                info["note"], attributions = str(err), "none"  # said once, not retried by a worker
            if first is not None:
                apply_attribution(info, first)
                if _explain.complete(first):
                    self.owner._attributions[str(obj)] = first
                    cached = first
                else:
                    info["note"] = "refining attributions…"
        panel = self.ensure_panel()
        painted = self.watch_paint()
        if attributions == "async" and cached is None:
            # its result arrives through the event loop, after show_cell; it computes after the paint
            self._start_cell_attribution(obj, first, painted)
        info["seconds"] = time.perf_counter() - t0
        panel.show_cell(info)
        self.lines_after_paint(obj, info["partners"], table, painted)
        return info

    def watch_paint(self) -> threading.Event:
        """An event set when the panel's prompt next paints (at once when it cannot: no window, hidden)."""
        painted = threading.Event()
        panel = self.panel
        view = panel.prompt.viewport() if panel is not None and not is_deleted(panel) else None
        if view is None or not view.isVisible():
            painted.set()
            return painted
        if self._paint_watch is None:
            self._paint_watch = _PaintWatch(self.draw_pending_lines)
            view.installEventFilter(self._paint_watch)
        if self._paint_watch.painted is not None:
            self._paint_watch.painted.set()  # a previous click's worker: its paint is not coming now
        self._paint_watch.painted = painted
        return painted

    def lines_after_paint(self, obj, partners: list[dict], table, painted: threading.Event) -> None:
        """Draw cell ``obj``'s partner lines once the panel has painted it (``painted``), now if it has."""
        if painted.is_set():
            self._pending_lines = None
            self.draw_partners(obj, partners, table)
            return
        self._pending_lines = (self.owner.annotation, obj, partners, table)
        QTimer.singleShot(PAINT_WAIT_MS, self.draw_pending_lines)

    def draw_pending_lines(self) -> None:
        """Draw the partner lines waiting for a paint, if they still belong to the cell shown."""
        pending, self._pending_lines = self._pending_lines, None
        if pending is None:
            return
        ann, obj, partners, table = pending
        panel = self.panel
        if (ann is not self.owner.annotation or self.owner.mask_layer is None or panel is None
                or is_deleted(panel) or (panel.current or {}).get("object") != obj):
            return
        self.draw_partners(obj, partners, table)

    def _cell_info(self, ann: Annotation, obj: int, prompt: dict, table) -> dict:
        """What the panel shows of cell ``obj`` before its attributions (see ``ExplanationPanel.show_cell``)."""
        row = table.loc[str(obj)]
        probs = {lab: float(row.get("p_" + str(lab).replace(" ", "_"), np.nan)) for lab in ann.type_labels}
        partners = []
        for p in prompt["partners"]:
            key = str(p["Object"])
            ct = table["cell_type"].get(key) if key in table.index else None
            partners.append({**p, "cell_type": ct if isinstance(ct, str) else None, "score": None})
        words = prompt["text"].split()
        try:
            anchor = words[words.index(":") + 1: words.index(";")]
        except ValueError:
            anchor = []
        info = {
            "object": obj, "image": ann.image,
            "predicted": row["cell_type"] if isinstance(row["cell_type"], str) else None,
            "probability": float(row["cell_type_probability"]), "probabilities": probs,
            "colors": _layers.type_colors(ann.type_labels), "text": prompt["text"], "partners": partners,
            "attribution": None, "note": "", "anchor_markers": anchor,
            # the user's marker names for the model's canonical ones (shown in the prompt and markers)
            "display_names": display_names(ann.markers),
        }
        info["levels"], info["percentiles"] = self.levels([obj] + [p["Object"] for p in partners])
        return info

    def levels(self, objects) -> tuple[list[dict], dict]:
        """The measured level of every marker (canonical name -> mean counts) of each of ``objects``, and
        for the first one each marker's percentile among the image's cells (0-1)."""
        ann = self.owner.annotation
        if self._levels_cache[0] is not ann:
            cols = {canonical_marker(m): m for m in ann.markers if m in ann.cells.columns}
            values = ann.cells[list(cols.values())].to_numpy(dtype=float)
            index = {str(o): i for i, o in enumerate(ann.cells["Object"].tolist())}
            self._levels_cache = (ann, list(cols), values, np.sort(values, axis=0), index)
        _, canon, values, ranked, index = self._levels_cache
        levels = []
        for o in objects:
            i = index.get(str(o))
            levels.append({} if i is None else dict(zip(canon, values[i].tolist())))
        pct = {}
        if levels and levels[0] and len(values):
            row = values[index[str(objects[0])]]
            below = [np.searchsorted(ranked[:, j], row[j], side="left") for j in range(len(canon))]
            pct = {c: float(b) / len(values) for c, b in zip(canon, below)}
        return levels, pct

    def table_by_object(self):
        """The annotation's table indexed by ``str(Object)``."""
        ann = self.owner.annotation
        if self._table_cache[0] is not ann:
            self._table_cache = (ann, ann.table.set_index(ann.table["Object"].astype(str)))
        return self._table_cache[1]

    # ------------------------------------------------------------------------------------- attributions
    def explain_one(self, obj, ann: Annotation | None = None) -> dict:
        """Cell ``obj``'s attribution, computed now and kept in the widget's cache; ``ann``: the
        annotation it was asked for (refused when the widget shows another one by now)."""
        gen = self.explain_steps(obj, ann)
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return stop.value

    @property
    def inline_first_pass(self) -> bool:
        """Whether a click computes its first shading itself (see INLINE_FIRST_PASS_S)."""
        times = sorted(self.first_pass_seconds)
        return len(times) < 3 or times[1] < INLINE_FIRST_PASS_S

    def first_pass(self, obj, ann: Annotation | None = None) -> dict:
        """Cell ``obj``'s first shading (one 16-point integrated-gradients pass), not cached; its time
        goes into ``first_pass_seconds``."""
        owner = self.owner
        ann = ann or owner.annotation
        if ann is None:
            raise AttributionsUnavailable("no annotation (it was cleared or is being re-run)")
        if ann is not owner.annotation:
            raise AttributionsUnavailable("the annotation changed while attributions were computed")
        t0 = time.perf_counter()
        first = _explain.explain_cells(ann.model, owner.prepared_cells(), [obj], markers=ann.markers,
                                       first_pass=True).get(str(obj))
        self.first_pass_seconds.append(time.perf_counter() - t0)
        if first is None:
            raise AttributionsUnavailable("attributions unavailable for this cell")
        return first

    def explain_steps(self, obj, ann: Annotation | None = None, first: dict | None = None,
                      painted: threading.Event | None = None):
        """Generator for the click worker: yields the first shading (one 16-point pass) when it is not
        yet complete, returns the refined attribution (kept in the widget's cache). ``first``: the first
        pass, computed already (in the click), so not yielded again; ``painted``: computes once it is set
        (the panel's paint, :data:`PAINT_WAIT_MS` at most)."""
        if painted is not None:
            painted.wait(PAINT_WAIT_MS / 1000)
        owner = self.owner
        ann = ann or owner.annotation
        given = first is not None
        if not given:
            first = self.first_pass(obj, ann)
        elif ann is not owner.annotation:
            raise AttributionsUnavailable("the annotation changed while attributions were computed")
        att = first
        if not _explain.complete(first):
            if not given:
                yield first
            att = _explain.explain_cells(ann.model, owner.prepared_cells(), [obj], markers=ann.markers,
                                         after_first_pass=True).get(str(obj)) or first
        owner._attributions[str(obj)] = att
        return att

    def _start_cell_attribution(self, obj, first: dict | None = None, painted: threading.Event | None = None
                                ) -> None:
        owner = self.owner
        ann = owner.annotation
        worker = create_worker(self.explain_steps, obj, ann, first, painted, _ignore_errors=True,
                               _start_thread=False)

        def current() -> bool:
            # the result belongs to this annotation and this cell only: a new run or a new click since
            # the worker started makes it stale; a closed viewer has deleted the panel
            panel = self.panel
            if panel is None or is_deleted(panel):
                return False
            return owner.annotation is ann and panel.current is not None and panel.current.get("object") == obj

        def done(att):
            if current():
                new = dict(self.panel.current)
                new["partners"] = [dict(p) for p in new["partners"]]
                apply_attribution(new, att)
                self.panel.show_cell(new)
                pending = self._pending_lines
                if pending is not None and pending[1] == obj:  # not drawn yet: drawn with these scores
                    self._pending_lines = (*pending[:2], new["partners"], pending[3])
                else:
                    self.draw_partners(obj, new["partners"], self.table_by_object(), widths_only=True)

        def failed(err):
            if current():
                self.panel.note.setText(first_line(err) if str(err) else "attributions failed")

        def finished():
            if owner.attribution_worker is worker:  # back to the whole-image worker, if one runs
                owner.attribution_worker = owner.attribution_map.worker

        worker.yielded.connect(done)  # the first shading; the refined one follows when it differs
        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.finished.connect(finished)
        owner.attribution_worker = worker
        worker.start()

    # ------------------------------------------------------------------------------------- partners
    def draw_partners(self, obj, partners: list[dict], table, widths_only: bool = False) -> None:
        """A ring around cell ``obj`` and a line to each partner, in one Shapes layer per image.
        ``widths_only``: the lines of ``obj`` are drawn already and its attribution only sets their widths:
        the shapes are kept and re-widthed (rebuilding them took ~0.1 s of every click's shading,
        profiled with cProfile under Xvfb)."""
        owner = self.owner
        ann, ml = owner.annotation, owner.mask_layer
        ps = float(meta(ml).get("pixel_size_um") or ml.scale[-1] or 1.0)
        ax, ay = float(table.loc[str(obj), "x"]) / ps, float(table.loc[str(obj), "y"]) / ps
        pxy, roles, scores = [], [], []
        for p in partners:
            k = str(p["Object"])
            if k not in table.index:
                continue
            pxy.append((float(table.loc[k, "x"]) / ps, float(table.loc[k, "y"]) / ps))
            roles.append(p["role"])
            scores.append(np.nan if p.get("score") is None else p["score"])
        slots = ann.model.pair_settings.n_pos + ann.model.pair_settings.n_neg
        data, types, colors, widths = _layers.partner_shapes((ax, ay), pxy, roles, scores, slots=slots)
        lay = find_layer(owner.viewer, "partners", ann.image)
        if widths_only and lay is not None and meta(lay).get("object") == obj and lay.nshapes == len(widths):
            lay.edge_width = [float(w) for w in widths]
            return
        name = f"{ann.image} partners of cell {obj}"
        if lay is None:
            lay = owner.viewer.add_shapes(data, shape_type=types, edge_color=colors, edge_width=widths,
                                          face_color="transparent", name=name, scale=ml.scale,
                                          translate=ml.translate,
                                          metadata=_layers.s2s_meta("partners", ann.image, object=obj))
        else:  # reuse the layer: removing one costs a garbage collection (~0.5 s)
            lay.selected_data = set()
            # one data change (each recomputes the viewer's dims for every layer; clearing and then adding
            # the shapes made two)
            lay.data = list(zip(data, types))
            lay.edge_color = colors
            lay.edge_width = [float(w) for w in widths]
            lay.face_color = "transparent"
            lay.name = name
            lay.metadata = _layers.s2s_meta("partners", ann.image, object=obj)
        owner.viewer.layers.selection.active = ml
