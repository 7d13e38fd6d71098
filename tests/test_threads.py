"""The thread policy of prediction: one torch thread per scored batch, torch's setting restored."""

import threading
import time

import numpy as np
import pytest
import torch

from spatial2sentence.threads import available_cores, default_workers, parallel_map, torch_threads


@pytest.fixture
def three_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_parallel_map_runs_each_item_on_one_torch_thread_in_order(three_threads, workers):
    seen = []

    def work(i):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        time.sleep(0.05)  # long enough that the pool needs more than one thread
        x = torch.from_numpy(np.random.default_rng(i).standard_normal((64, 300), dtype=np.float32))
        return i, (x @ x.T).sum(1).numpy()

    out = list(parallel_map(work, range(9), workers))
    assert [i for i, _ in out] == list(range(9))
    assert {n for _, n in seen} == {1}
    if workers > 1:
        assert len({name for name, _ in seen}) > 1  # really in parallel threads
    assert torch.get_num_threads() == 3
    ref = [work(i)[1] for i in range(9)]
    with torch_threads(1):
        ref1 = [work(i)[1] for i in range(9)]
    for (_, a), b in zip(out, ref1):
        np.testing.assert_array_equal(a, b)
    assert len(ref) == 9


def test_parallel_map_restores_torch_threads_when_abandoned(three_threads):
    gen = parallel_map(lambda i: torch.get_num_threads(), range(20), 2)
    assert next(gen) == 1
    gen.close()  # a cancelled run stops consuming
    assert torch.get_num_threads() == 3


def test_torch_threads_restores_even_on_error(three_threads):
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 3


def test_default_workers_within_available_cores():
    assert 1 <= default_workers() <= available_cores()
