"""Adapter to token attributions (``spatial2sentence.explain``), which may not be installed.

The plugin consumes one attribution object per cell::

    {"object": 12, "predicted": "beta", "probabilities": {"beta": 0.8, ...},
     "tokens": [{"token": "PIN", "score": 0.31, "part": "anchor"}, ...],
     "markers": [{"marker": "PIN", "score": 0.31}, ...],
     "partners": [{"object": 40, "role": "positive", "distance_um": 8.2, "direction": "north",
                   "score": 0.05}, ...]}

:func:`explain_cells` returns ``{str(object id): attribution}``; when the core has no explainer it raises
:class:`AttributionsUnavailable` (the panel then shows the prompt without shading and says so).
Tests may set :data:`OVERRIDE` to a function ``(model, cells, object_ids, markers) -> list[dict]``.
"""

from __future__ import annotations

OVERRIDE = None
_NAMES = ("explain_cells", "explain", "attributions", "attribute_cells")


class AttributionsUnavailable(RuntimeError):
    pass


def _core_function():
    if OVERRIDE is not None:
        return OVERRIDE
    try:
        from spatial2sentence import explain as core  # noqa: F401
    except Exception as err:  # not written yet, or broken: degrade, never crash
        raise AttributionsUnavailable(f"attributions unavailable ({type(err).__name__})") from None
    for name in _NAMES:
        fn = getattr(core, name, None)
        if callable(fn):
            return fn
    raise AttributionsUnavailable("attributions unavailable (spatial2sentence.explain has no explain_cells)")


def available() -> bool:
    try:
        _core_function()
        return True
    except AttributionsUnavailable:
        return False


def _key(v) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return str(v)


def explain_cells(model, cells, object_ids, markers=None, progress=None, overview: bool = False) -> dict[str, dict]:
    """``overview``: the core's fast settings for whole-image maps (``spatial2sentence.explain.OVERVIEW``)."""
    fn = _core_function()
    options = {}
    if overview and OVERRIDE is None:
        from spatial2sentence.explain import OVERVIEW

        options = dict(OVERVIEW)
    try:
        try:
            res = fn(model, cells, list(object_ids), markers=markers, progress=progress, **options)
        except TypeError:
            res = fn(model, cells, list(object_ids))
    except AttributionsUnavailable:
        raise
    except Exception as err:
        raise AttributionsUnavailable(f"attributions failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if isinstance(res, dict) and "tokens" in res:
        res = [res]
    if isinstance(res, dict):
        return {_key(k): v for k, v in res.items()}
    return {_key(a.get("object", a.get("Object"))): a for a in res}
