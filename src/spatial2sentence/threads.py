"""Torch CPU threads: results that do not depend on the thread count, and no process-wide change left behind.

Why this module exists: torch's intra-op thread count changes how float reductions inside a matrix
product are split, so the same prompts scored at 1 and at 2 threads differ in the last float32 digits
(up to 4e-7 in a probability). Batch runs promise byte-identical outputs in-process and on Dask workers,
so prediction never lets torch split one forward pass over several threads: :func:`single_threaded_torch`
runs each pass on one intra-op thread (restoring the caller's setting afterwards), and parallelism comes
from scoring several batches at once in a thread pool (:func:`parallel_map`), torch releasing the GIL
inside its kernels. Every batch then gives the same bits whatever the number of workers.

``torch.set_num_threads`` is process-wide; library code changes it only inside :func:`torch_threads`,
which restores the previous value. Seeding torch is process-wide too: :func:`torch_rng_kept` restores
the global generators after training or building a model.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.RLock()
_depth = 0  # nesting of single_threaded_torch (several widgets or runs may score at once)
_saved: int | None = None


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None or 0: unchanged), then restore."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def torch_rng_kept() -> Iterator[None]:
    """Run the block (which seeds torch for itself) and give torch's global generators back their state:
    training and model building seed torch, and a caller's own random numbers must not depend on
    whether a model was trained or built in between."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def single_threaded_torch() -> Iterator[None]:
    """One intra-op thread for the duration of the block (re-entrant and safe across threads)."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = torch.get_num_threads()
            if _saved != 1:
                torch.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None and torch.get_num_threads() != _saved:
                torch.set_num_threads(_saved)


def available_cores() -> int:
    """Cores this process may run on (affinity and cgroup CPU quota), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    try:  # cgroup v2 quota: "max 100000" or "200000 100000"
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def default_workers() -> int:
    """Parallel scoring workers by default: every core this process may use (affinity, cgroup quota).

    Why not fewer on a busy machine: the workers score independent batches with no synchronisation
    between them, so another core-bound process only takes its share of time instead of stalling
    every step the way split intra-op threads do. ``benchmarks/threads.py`` (1,200 cells, type +
    status, 2 cores): quiet 1,085 cells/s with 2 workers vs 648 with 1; with one busy core 941 vs 653.
    """
    return available_cores()


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` in order, ``workers`` at a time, each on one torch thread (see module doc)."""
    items = list(items)
    with single_threaded_torch():
        if workers <= 1 or len(items) <= 1:
            for it in items:
                yield fn(it)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s2s-score") as pool:
            # keep at most 2 x workers batches in flight so cancelling stops soon
            pending = []
            it = iter(items)
            for x in it:
                pending.append(pool.submit(fn, x))
                if len(pending) >= 2 * workers:
                    break
            done = object()
            while pending:
                res = pending.pop(0).result()
                nxt = next(it, done)
                if nxt is not done:
                    pending.append(pool.submit(fn, nxt))
                yield res
