"""Release files and packaging: the declared requirements cover every run-time import, the release
files exist and parse, ``s2s --version`` names the package and the embedded model."""

from __future__ import annotations

import ast
import configparser
import json
import re
import sys

import pytest
from conftest import REPO

# import name -> distribution name in setup.cfg, where they differ
DIST = {"sklearn": "scikit-learn", "PIL": "pillow", "distributed": "dask", "yaml": "pyyaml",
        "skimage": "scikit-image"}
# optional at run time, with a one-line message when missing: extras
EXTRAS = {"readimc": "imc"}
# a Qt binding's own module, imported only when qtpy runs on that binding, with a fallback without it
# (napari_s2s._controls.is_deleted: qtpy.sip on PyQt, shiboken6 on PySide6); the user's napari brings it
QT_BINDING_ONLY = {"shiboken6"}
OWN = {"spatial2sentence", "napari_s2s"}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level names of every absolute import (module level and inside functions) of the shipped code."""
    found: dict[str, set[str]] = {}
    for root in (REPO / "src" / "spatial2sentence", REPO / "napari_s2s"):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in OWN and top not in sys.stdlib_module_names:
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _requirement_names(lines: str) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r.strip(), maxsplit=1)[0].lower() for r in lines.splitlines() if r.strip()}


def test_install_requires_cover_every_runtime_import():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    required = _requirement_names(cfg["options"]["install_requires"])
    extras = {k: _requirement_names(v) for k, v in cfg["options.extras_require"].items()}
    missing = {}
    for module, where in _third_party_imports().items():
        dist = DIST.get(module, module).lower()
        if module in QT_BINDING_ONLY:
            continue
        if module in EXTRAS:
            assert dist in extras[EXTRAS[module]] and dist not in required, module
        elif dist not in required:
            missing[module] = sorted(where)
    assert not missing, f"imported at run time but not in install_requires: {missing}"


def test_release_files():
    assert "BSD 3-Clause" in (REPO / "LICENSE").read_text() and "napari-s2s developers" in (REPO / "LICENSE").read_text()
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    from spatial2sentence import __version__

    assert cff["cff-version"] == "1.2.0" and cff["version"] == __version__
    assert any("2506.01918" in str(ref) for ref in cff["references"])
    assert "## " in (REPO / "CHANGELOG.md").read_text()
    hub = (REPO / ".napari-hub" / "DESCRIPTION.md").read_text()
    for png in re.findall(r"docs/[\w.-]+\.png", hub):
        assert (REPO / png).is_file(), png


def test_version_names_package_and_model():
    from click.testing import CliRunner

    from spatial2sentence import __version__
    from spatial2sentence.cli import main

    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0, res.output
    info = json.loads((REPO / "src/spatial2sentence/data/default_model/s2s_config.json").read_text())["info"]
    assert f"napari-s2s) {__version__}" in res.output
    assert info["name"] in res.output and info["recipe"] in res.output
    assert re.search(r"version: (sha256:[0-9a-f]{12}|\S+)", res.output)
