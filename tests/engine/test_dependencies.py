"""dependencies: the graph's search is bounded, and a search that runs on is a clear refusal."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import prune_magic as pm
from prune_magic.engine import dependencies
from tests.conftest import same_bits, state
from tests.engine.architectures import ARCHITECTURES


def spin(seconds: float) -> int:
    """A pure-Python loop (what Torch-Pruning's index mapping does when it does not end)."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n


def test_a_block_that_runs_too_long_is_stopped() -> None:
    started = time.perf_counter()
    with pytest.raises(dependencies._Overtime), dependencies._Watchdog() as watchdog, watchdog.limit(0.2):
        spin(5)
    assert time.perf_counter() - started < 2


def test_a_block_within_its_time_runs_to_the_end_and_nothing_fires_later() -> None:
    with dependencies._Watchdog() as watchdog:
        for _ in range(3):  # one watcher, armed again for each block
            with watchdog.limit(0.3):
                spin(0.05)
        spin(0.5)  # disarmed: no exception arrives between blocks
    spin(0.5)  # nor after the watchdog stopped


def test_the_limit_works_off_the_main_thread_too() -> None:
    caught: list[BaseException] = []

    def work() -> None:
        try:
            with dependencies._Watchdog() as watchdog, watchdog.limit(0.2):
                spin(5)
        except BaseException as exc:
            caught.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(3)
    assert not worker.is_alive() and isinstance(caught[0], dependencies._Overtime)


def test_a_search_that_does_not_end_is_a_one_line_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    factory, shape = ARCHITECTURES["resnet"]
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(shape)
    before = state(model)
    monkeypatch.setattr(dependencies, "GROUP_SECONDS", 0.3)
    real = dependencies.groups

    def looping(graph, *args):  # every group search spins as Swin's does
        original = graph.get_pruning_group
        graph.get_pruning_group = lambda *a, **k: (spin(60), original(*a, **k))[1]
        return real(graph, *args)

    monkeypatch.setattr("prune_magic.engine.structured.groups", looping)
    started = time.perf_counter()
    with pytest.raises(
        pm.PruneError,
        match=r"^structured pruning gave up: the search for the layers coupled to \S+ did not end within 0.3 s.*layers=",
    ) as error:
        pm.prune(model, "structured amount=0.5", example_input=x)
    assert time.perf_counter() - started < 30  # each search would spin for 60 s
    assert "\n" not in str(error.value)
    assert same_bits(model, before)


def test_the_concat_mapping_follows_the_installed_torch_pruning() -> None:
    """dependencies._map_concat copies what Torch-Pruning's update_concat_index_mapping does; a
    new Torch-Pruning must be read again (and added to CONCAT_MAPPING_VERSIONS) before the pin moves."""
    assert dependencies.torch_pruning_version() in dependencies.CONCAT_MAPPING_VERSIONS


def test_without_the_concat_mapping_a_densenet_keeps_its_concatenated_layers_whole(monkeypatch) -> None:
    from tests.engine.architectures import DenseNet

    monkeypatch.setattr(dependencies, "CONCAT_MAPPING_VERSIONS", ())
    model = DenseNet().eval()
    x = torch.randn(2, 1, 8, 8)
    before = state(model)
    try:
        result = pm.prune(model, "structured amount=0.5", example_input=x)
    except pm.PruneError:
        return  # a clear refusal is as good
    model(x)  # whatever it pruned, the model still runs
    pm.undo(model)
    assert same_bits(model, before) and result.steps
