"""The one bridge from a blocking call in a helper thread to a generator that a napari
``thread_worker`` runs (no Qt here): the annotation, the attribution map, batch runs and training in
the plugin all go through :func:`run_in_thread`.

Why a helper thread at all: the core's calls block (torch), while a ``GeneratorWorker`` can only see
an abort request or hand progress to the GUI between two ``yield`` s.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable


def run_in_thread(fn: Callable, cancel: threading.Event | None = None, name: str = "s2s-work"):
    """Generator: run ``fn(emit)`` in a helper thread and yield every message it passes to ``emit``
    (and ``None`` every 0.1 s, so a worker can check for abort requests); return ``fn``'s result or
    raise its error in the caller's thread. Closing the generator early sets ``cancel``."""
    q: queue.Queue = queue.Queue()
    out: dict = {}
    done = object()

    def run():
        try:
            out["result"] = fn(q.put)
        except BaseException as err:  # handed to the caller's thread
            out["error"] = err
        finally:
            q.put(done)

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    try:
        while True:
            try:
                msg = q.get(timeout=0.1)
            except queue.Empty:
                yield None
                continue
            if msg is done:
                break
            yield msg
    finally:
        if t.is_alive() and cancel is not None:  # closed early (worker quit): ask the call to stop
            cancel.set()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


def in_thread(fn: Callable, cancel: threading.Event):
    """:func:`run_in_thread` for the core's progress convention: ``fn(progress)`` where
    ``progress(done, total)`` is yielded as ``("progress", done, total)`` and returns False once
    ``cancel`` is set (the core then stops between batches)."""

    def call(emit):
        def progress(done, total):
            emit(("progress", int(done), int(total)))
            return not cancel.is_set()

        return fn(progress)

    return run_in_thread(call, cancel, name="s2s-predict")
