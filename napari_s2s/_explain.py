"""Token attributions for the plugin: :func:`spatial2sentence.explain.explain_cells` keyed by cell.

The plugin consumes one attribution object per cell (the core's structure, see
:mod:`spatial2sentence.explain`)::

    {"object": 12, "predicted": "beta", "probabilities": {"beta": 0.8, ...},
     "tokens": [{"token": "PIN", "score": 0.31, "part": "anchor"}, ...],
     "markers": [{"marker": "PIN", "score": 0.31}, ...],
     "partners": [{"object": 40, "role": "positive", "distance_um": 8.2, "direction": "north",
                   "score": 0.05}, ...]}

:func:`explain_cells` returns ``{str(object id): attribution}``; when the explainer fails it raises
:class:`AttributionsUnavailable` with a one-line message (the panel then shows the prompt without
shading and says why).
"""

from __future__ import annotations

from spatial2sentence.errors import first_line


class AttributionsUnavailable(Exception):
    """Not a ``RuntimeError``: superqt's generator worker takes a RuntimeError for "the worker was
    deleted" and ends without ``errored`` or ``finished`` (the attribution map's progress row then
    stayed up for good when the explainer failed)."""


def _key(v) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return str(v)


def explain_cells(model, cells, object_ids, markers=None, progress=None, overview: bool = False,
                  first_pass: bool = False, after_first_pass: bool = False) -> dict[str, dict]:
    """The attributions of ``object_ids`` (``cells``: a cells table or the run's prepared CellSet);
    ``overview``: the core's fast settings for whole-image maps (``spatial2sentence.explain.OVERVIEW``);
    ``first_pass``: one 16-point pass, no refinement (``spatial2sentence.explain.FIRST_PASS``)."""
    # the core's explainer (torch) is imported in the worker's thread that calls this, not when the
    # plugin's widgets are built on napari's GUI thread
    from spatial2sentence import explain as core

    options = dict(core.OVERVIEW) if overview else dict(core.FIRST_PASS) if first_pass else {}
    if after_first_pass:  # the refinement doubles from 16 points; the first pass already showed 16 fall short
        options = {"n_steps": 2 * core.FIRST_PASS["n_steps"]}
    try:
        res = core.explain_cells(model, cells, list(object_ids), markers=markers, progress=progress, **options)
    except Exception as err:  # noqa: BLE001 - shown as one line in the panel, never a traceback
        raise AttributionsUnavailable(f"attributions failed: {first_line(err)}") from None
    return {_key(a.get("object")): a for a in res}


def complete(attribution: dict) -> bool:
    """Whether a cell's attribution already meets the refinement's completeness rule; one without the
    rule's figures (another explainer's) cannot be refined, so it counts as complete (this runs in the
    click itself: it must not raise)."""
    from spatial2sentence.explain import is_complete  # in the worker's thread (see explain_cells)

    if not {"completeness_error", "f_input", "f_baseline"} <= set(attribution):
        return True
    return is_complete(attribution)
