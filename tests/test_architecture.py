"""The shape of the code (issue 15), checked on the source itself: no import cycle, rooms small enough
to live in, one implementation of each shared job, a Qt-free core. Walks ``ast``; imports nothing it
checks."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"spatial2sentence": REPO / "src" / "spatial2sentence", "napari_s2s": REPO / "napari_s2s"}
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
# a longer function is allowed where a comment within the three lines above its ``def`` says why
LONG_MARK = "# long function:"


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, root in PACKAGES.items():
        for f in root.rglob("*.py"):
            parts = [pkg, *f.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module of ours that ``name`` imports, at module level or inside functions."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles(defaultdict(set, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == [["a", "b", "c"]]
    assert _cycles(defaultdict(set, {"a": {"b"}, "b": set()})) == []


def test_no_import_cycle():
    graph = defaultdict(set, {name: _imports(name, path) for name, path in MODULES.items()})
    assert _cycles(graph) == []


def test_the_core_never_imports_qt_or_napari():
    bad = {}
    for name, path in MODULES.items():
        if not name.startswith("spatial2sentence"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            hits = [m for m in mods if m.split(".")[0] in ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2",
                                                           "PySide6", "magicgui", "napari_s2s")]
            if hits:
                bad.setdefault(name, []).extend(hits)
    assert bad == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_rooms_are_small_enough_to_live_in(name):
    path = MODULES[name]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_FILE_LINES, f"{path.relative_to(REPO)}: {len(lines)} lines"
    long = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            n = node.end_lineno - node.lineno + 1
            said_why = any(LONG_MARK in lines[k] for k in range(max(0, first - 4), first - 1))
            if n > MAX_FUNCTION_LINES and not said_why:
                long.append(f"{node.name} ({n} lines, line {node.lineno})")
    assert long == [], f"{path.relative_to(REPO)}: " + ", ".join(long)


# each shared job has one home: a second module-level definition of one of these names is a copy of it
# (a method that hands over to the home, such as Annotation.class_id_mask, is not)
ONE_HOME = {
    "load_model": "spatial2sentence.annotate",  # the one model cache
    "annotate_image": "spatial2sentence.annotate",  # annotate one image
    "class_id_mask": "spatial2sentence.labels",
    "resolve_device": "spatial2sentence.model",  # the device check
    "run_in_thread": "napari_s2s._bridge",  # the thread-to-generator bridge
}


def test_each_shared_job_has_one_home():
    homes = defaultdict(list)
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in ONE_HOME:
                homes[node.name].append(name)
    assert {k: sorted(v) for k, v in homes.items()} == {k: [v] for k, v in ONE_HOME.items()}


def test_every_code_package_is_shipped():
    """A subpackage missing from setup.cfg's ``packages`` is left out of the wheel (``pip install
    napari-s2s`` then fails on its import, as the batch/ and io/ split once did in the wheel check)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    code = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert code - listed == set()
