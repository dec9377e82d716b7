"""Sweeps on a Dask LocalCluster: a notebook's eval function, the same numbers as the local sweep,
the model sent once per worker, and a worker killed mid-sweep."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import textwrap
import time

import cloudpickle
import pytest
import torch
from torch import nn

import prune_magic as pm
from prune_magic.engine.sensitivity import sensitivity
from tests.conftest import same_bits, state
from tests.engine.architectures import MLP
from tests.test_magics import ip, run  # noqa: F401  (the shell fixture)

distributed = pytest.importorskip("distributed")

LEVELS = (0.3, 0.6, 0.9)

# a notebook cell: the eval function is defined in __main__ and closes over X_test, y_test
CELL = textwrap.dedent(
    """
    import time
    import torch

    torch.manual_seed(1)
    X_test = torch.randn(96, 64)
    y_test = None

    def accuracy(model):
        time.sleep(DELAY)  # a validation set that takes a while
        with torch.no_grad():
            return float((model(X_test).argmax(1) == y_test).float().mean())
    """
)


def notebook(model: nn.Module, delay: float = 0.0):
    """The eval function as a notebook cell defines it (its module is __main__, not importable)."""
    cell = {"__name__": "__main__", "DELAY": delay}
    exec(CELL, cell)
    with torch.no_grad():
        cell["y_test"] = model(cell["X_test"]).argmax(1)
    assert cell["accuracy"].__module__ == "__main__"
    return cell["accuracy"]


@pytest.fixture(scope="module")
def client():
    # an InteractiveShell made by an earlier test replaces __main__ with a module that lacks the
    # __spec__ multiprocessing reads to spawn workers (a kernel's has one)
    main = sys.modules["__main__"]
    if not hasattr(main, "__spec__"):
        main.__spec__ = None
    # worker processes, as on a cluster (threads would share the model and hide a copy too many)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def model_and_eval(delay: float = 0.0):
    torch.manual_seed(0)
    model = MLP().eval()
    return model, notebook(model, delay)


def test_a_cluster_sweep_equals_the_local_one_and_leaves_the_model(client) -> None:
    model, accuracy = model_and_eval()
    before = state(model)
    local = sensitivity(model, accuracy, levels=LEVELS, stop_below=0.8)
    seen: list[int] = []
    remote = sensitivity(
        model,
        accuracy,
        levels=LEVELS,
        stop_below=0.8,
        executor=client,
        progress=lambda r: seen.append(r.evaluations),
    )
    assert remote.complete, remote.stopped
    assert remote.curves == local.curves and remote.baseline == local.baseline
    assert any(None in curve for curve in local.curves.values())  # the early stop is the same too
    assert remote.evaluations == local.evaluations and seen == list(range(2, local.evaluations + 1))
    assert same_bits(model, before) and len(pm.history(model)) == 0


def test_the_model_goes_to_each_worker_once(client, monkeypatch) -> None:
    model, accuracy = model_and_eval()
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    submitted: list[int] = []
    submit = client.submit

    def spy(fn, *args, **kwargs):
        submitted.append(len(cloudpickle.dumps((fn, args, kwargs))))
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(client, "submit", spy)
    moved = client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total)
    result = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1, executor=client)
    after = client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total)
    assert result.complete, result.stopped
    assert len(submitted) == result.evaluations  # the baseline and the points: each a small task
    assert max(submitted) < 0.01 * model_bytes
    between_workers = sum(after.values()) - sum(moved.values())  # a model fetched per point would show here
    assert between_workers < 0.01 * model_bytes * len(submitted)


def test_a_worker_killed_mid_sweep_is_replaced_and_the_sweep_completes(client) -> None:
    model, accuracy = model_and_eval(delay=0.05)
    local = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1)
    pids = client.run(os.getpid)
    killed: list[int] = []

    def kill_one(partial: pm.Sensitivity) -> None:
        if not killed:
            killed.append(next(iter(pids.values())))
            os.kill(killed[0], signal.SIGKILL)

    remote = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1, executor=client, progress=kill_one)
    assert killed and remote.complete, remote.stopped
    assert remote.curves == local.curves
    client.wait_for_workers(2, timeout=30)  # the nanny starts another one for the next test


def test_ctrl_c_cancels_what_is_outstanding_and_leaves_the_model(client) -> None:
    model, accuracy = model_and_eval(delay=0.05)
    before = state(model)

    def ctrl_c(partial: pm.Sensitivity) -> None:
        raise KeyboardInterrupt

    result = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1, executor=client, progress=ctrl_c)
    assert result.stopped == "interrupted (Ctrl-C); the model is as it was"
    assert result.evaluations == 2  # the baseline and the point that arrived
    assert same_bits(model, before) and len(pm.history(model)) == 0

    def tasks(dask_scheduler) -> int:
        return len(dask_scheduler.tasks)

    deadline = time.monotonic() + 10
    while client.run_on_scheduler(tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.run_on_scheduler(tasks) == 0  # cancelled, payload released: nothing left running


def test_an_error_on_a_worker_stops_the_sweep_and_keeps_what_arrived(client) -> None:
    model, _ = model_and_eval()

    def broken(m: nn.Module) -> float:
        if not m.fc1.weight.all():  # every pruned point fails; the baseline (dense) passes
            raise ValueError("no data on this worker")
        return 1.0

    result = sensitivity(model, broken, levels=LEVELS, executor=client)
    assert not result.complete and "ValueError: no data on this worker" in result.stopped


def test_the_magic_sweeps_on_the_client_named_by_executor(client, ip) -> None:  # noqa: F811 (a fixture)
    model = ip.user_ns["model"]
    before = state(model)
    ip.user_ns["client"] = client
    run(ip, "%prune sensitivity model --eval agreement --levels 0.2,0.5,0.9 -o local")
    run(ip, "%prune sensitivity model --eval agreement --levels 0.2,0.5,0.9 --executor client -o remote")
    local, remote = ip.user_ns["local"], ip.user_ns["remote"]
    assert ip.user_ns["agreement"].__module__ == "__main__"  # a notebook's function, sent by value
    assert remote.complete and remote.curves == local.curves
    assert same_bits(model, before)


def test_explore_sweeps_on_the_client_named_by_executor(client, ip) -> None:  # noqa: F811 (a fixture)
    model = ip.user_ns["model"]
    before = state(model)
    ip.user_ns["client"] = client
    run(ip, "%prune explore model --eval agreement --levels 0.3,0.8 -o local")
    run(ip, "%prune explore model --eval agreement --levels 0.3,0.8 --executor client -o remote")
    local, remote = ip.user_ns["local"], ip.user_ns["remote"]
    assert remote.complete and remote.curves == local.curves and remote.baseline == local.baseline
    assert same_bits(model, before)


def test_a_payload_copied_while_a_worker_prunes_its_model_is_the_clients() -> None:
    from prune_magic.engine.cluster import Payload, remote_point

    model, accuracy = model_and_eval()
    before = state(model)
    payload = Payload.pack(model, accuracy, "clip", ["fc1", "fc2"], None, None)
    remote_point(payload, "fc1", 0.9)  # the worker's copy now exists and has been pruned in place
    with torch.no_grad():
        payload.sweeper.model.fc1.weight.zero_()  # as if caught halfway through a point
    copied = pickle.loads(pickle.dumps(payload))  # a peer fetching it, or a spill to disk
    assert remote_point(copied, "fc1", 0.0) == 1.0
    assert same_bits(copied.sweeper.model, before)


def test_a_payload_holds_each_tensor_once_however_many_views_the_eval_function_keeps() -> None:
    from prune_magic.engine.cluster import Payload, remote_point

    model, _ = model_and_eval()
    X = torch.randn(512, 64)
    batches = list(X.split(8))  # 64 views of one storage, as a notebook's X_test.split(32) makes

    def batched(m: nn.Module) -> float:
        with torch.no_grad():
            return float(sum(m(b).sum() for b in batches))

    payload = Payload.pack(model, batched, "clip", ["fc1", "fc2"], None, None)
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # plain pickling wrote X once per view: 64 times its 131 kB
    assert len(payload.blob) < 1.5 * (X.numel() * X.element_size() + model_bytes)
    assert remote_point(payload, "fc1", 0.0) == batched(model)


def test_an_eval_function_that_changes_a_workers_weights_stops_the_sweep_and_leaves_the_model(client) -> None:
    model, accuracy = model_and_eval()
    before = state(model)
    calls = []

    def steps_the_optimizer_once(m: nn.Module) -> float:
        calls.append(1)  # (on the worker's copy of this list) the baseline reads, the first point writes
        if len(calls) == 2:
            with torch.no_grad():
                m.fc1.weight.mul_(1.5)
        return accuracy(m)

    result = sensitivity(model, steps_the_optimizer_once, levels=LEVELS, stop_below=-1, executor=client)
    assert "on a worker" in result.stopped and "changed the model's weights" in result.stopped
    assert "your model here is as it was" in result.stopped
    assert same_bits(model, before)
    pm.prune(model, "clip amount=0.5")
    pm.undo(model)  # not tainted: undo and reset still work
    assert same_bits(model, before)
