"""Cold start: the plugin loads the model in the background when the widget opens (issue 20); a Run
that asks for the model meanwhile waits for that load instead of loading it a second time."""

from __future__ import annotations

import threading
import time

from napari_s2s import _annotate
from spatial2sentence import annotate as core


def test_warm_up_loads_once_and_a_concurrent_run_waits_for_it(monkeypatch):
    from spatial2sentence.model import S2SModel

    calls = []
    real = S2SModel.from_pretrained.__func__

    def slow_load(cls, path=None, device="auto", dtype="auto"):
        calls.append(threading.current_thread().name)
        time.sleep(0.5)  # a slow disk / first import
        return real(cls, path, device=device, dtype=dtype)

    monkeypatch.setattr(S2SModel, "from_pretrained", classmethod(slow_load))
    monkeypatch.setattr(core, "_MODELS", {})
    thread = _annotate.warm_up(None, "cpu")
    deadline = time.time() + 30
    while not calls and time.time() < deadline:  # the warm-up is loading when the Run asks
        time.sleep(0.01)
    model = core.load_model(None, "cpu")
    thread.join(60)
    assert not thread.is_alive()
    assert calls == ["s2s-warm-up"]  # loaded once, by the warm-up
    assert core.load_model(None, "cpu") is model
    # the warm-up also ran the model once (torch's first-call setup is paid before the Run)
    assert model.lm.training is False


def test_warm_up_errors_are_left_for_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(core, "_MODELS", {})
    thread = _annotate.warm_up(tmp_path / "missing", "cpu")
    thread.join(30)
    assert not thread.is_alive() and core._MODELS == {}


def test_loads_for_different_devices_never_run_at_once(monkeypatch):
    """Two loads (the warm-up's 'auto' and a Run's 'cpu') are serialised: importing transformers from two
    threads at once fails inside its lazy modules."""
    from spatial2sentence.model import S2SModel

    active, overlap = [], []
    real = S2SModel.from_pretrained.__func__

    def load(cls, path=None, device="auto", dtype="auto"):
        active.append(1)
        if len(active) > 1:
            overlap.append(True)
        time.sleep(0.3)
        try:
            return real(cls, path, device="cpu", dtype=dtype)
        finally:
            active.pop()

    monkeypatch.setattr(S2SModel, "from_pretrained", classmethod(load))
    monkeypatch.setattr(core, "_MODELS", {})
    thread = _annotate.warm_up(None, "auto")
    core.load_model(None, "cpu")
    thread.join(60)
    assert not overlap
    # on a machine without CUDA "auto" is the CPU: one model serves both
    import torch

    assert len(core._MODELS) == (2 if torch.cuda.is_available() else 1)
