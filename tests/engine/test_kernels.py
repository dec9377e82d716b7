"""The compiled record kernels' guards, and the memory an undo record is written to."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

import prune_magic as pm
from prune_magic.engine import _kernels, clip
from tests.conftest import use_kernels


def test_compact_refuses_a_values_array_without_slack_and_touches_nothing(monkeypatch) -> None:
    use_kernels(monkeypatch, numba=True)
    compiled = _kernels.kernels()
    assert compiled is not None
    bits = np.arange(1, 21, dtype=np.int32)
    packed = np.packbits(bits % 3 == 0, bitorder="little")  # 6 marked
    for size in (0, 5, 6):  # too small: the loop writes one past the last marked value
        values = np.zeros(size, np.int32)
        written, counts = compiled.compact(bits, packed, values, 8)
        assert written == -1 and counts.tolist() == [6]
        assert bits.tolist() == list(range(1, 21)) and not values.any()
    values = np.zeros(7, np.int32)
    assert compiled.compact(bits, packed, values, 8)[0] == 6
    assert values[:6].tolist() == [3, 6, 9, 12, 15, 18]
    assert bits.tolist() == [0 if b % 3 == 0 else b for b in range(1, 21)]


@pytest.mark.parametrize("n", [10, 300_000, 700_000])
def test_fresh_arrays_hold_what_is_written(n: int) -> None:
    values = clip.fresh(n, np.dtype(np.int32))
    assert values.shape == (n,) and values.dtype == np.int32 and values.flags.writeable
    values[:] = np.arange(n, dtype=np.int32)
    assert int(values[-1]) == n - 1 and int(values.sum(dtype=np.int64)) == n * (n - 1) // 2
    if sys.platform.startswith("linux") and values.nbytes >= clip.HUGE_PAGE:
        assert values.ctypes.data % clip.HUGE_PAGE == 0  # starts on a huge page boundary


def test_fresh_falls_back_to_numpy_when_no_map_is_had(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(clip.mmap, "mmap", refuse)
    values = clip.fresh(600_000, np.dtype(np.int32))
    values[:] = 7
    assert values.shape == (600_000,) and int(values.sum()) == 4_200_000


def test_fresh_skips_advice_the_kernel_refuses(monkeypatch) -> None:
    monkeypatch.setattr(clip, "MADV_POPULATE_WRITE", 12345)  # no such advice: EINVAL
    values = clip.fresh(600_000, np.dtype(np.float32))
    values[:] = 1.5
    assert float(values.sum()) == 900_000.0


def test_small_steps_run_numpy_unless_numba_is_forced(monkeypatch) -> None:
    """Loading numba costs more than it saves below MIN_WEIGHTS; forcing it (tests) still works."""
    calls = use_kernels(monkeypatch, numba=True)  # skips without numba, fails in CI
    monkeypatch.setattr(_kernels, "use_numba", None)  # automatic
    monkeypatch.delenv(_kernels.ENV, raising=False)
    assert _kernels.kernels(_kernels.MIN_WEIGHTS - 1) is None
    assert _kernels.kernels(_kernels.MIN_WEIGHTS) is not None
    small = nn.Sequential(nn.Linear(64, 64, bias=False))
    pm.prune(small, "clip amount=0.5 scope=global")
    assert not calls
    large = nn.Sequential(nn.Linear(512, 256, bias=False), nn.Linear(256, 512, bias=False))  # MIN_WEIGHTS
    assert sum(p.numel() for p in large.parameters()) == _kernels.MIN_WEIGHTS
    pm.prune(large, "clip amount=0.5 scope=global")
    assert len(calls) == 2  # one copy-out pass per tensor
    large.append(nn.Linear(512, 2, bias=False))
    pm.prune(large, "clip amount=0.6")  # the step decides: its small layer too
    assert len(calls) == 5
    monkeypatch.setattr(_kernels, "use_numba", True)
    pm.prune(small, "clip amount=0.7")
    assert len(calls) == 6


def test_popcounts_per_chunk(monkeypatch) -> None:
    use_kernels(monkeypatch, numba=True)
    compiled = _kernels.kernels()
    assert compiled is not None
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, 1003, dtype=np.uint8)  # not a whole number of words
    want = [int(np.unpackbits(packed[c : c + 64]).sum()) for c in range(0, 1003, 64)]
    assert compiled.popcounts(packed, 64).tolist() == want
    assert compiled.popcounts(packed, 1008).tolist() == [sum(want)]


def test_the_compiled_path_runs_on_numpy_1(monkeypatch) -> None:
    """numpy>=1.24 is allowed: nothing numpy 2 added (np.bitwise_count) may be called."""
    use_kernels(monkeypatch, numba=True)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 10))
    before = [p.detach().clone() for p in model.parameters()]
    result = pm.prune(model, "clip amount=0.9 scope=global\nclip threshold=0.05 layers=1")
    assert result.steps[0].changed == round(0.9 * 93_000)
    pm.reset(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
