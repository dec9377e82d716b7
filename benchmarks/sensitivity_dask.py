"""The sensitivity sweep on a Dask LocalCluster against the local sweep: ``sensitivity.py --dask N``.

Usage::

    .venv/bin/python benchmarks/sensitivity.py --dask 2 [--dask-samples 2048] [--repeat 2]

An eval-bound CNN (the small CNN of ``sensitivity.py``: 3x Conv+BN+ReLU, 32-64-64 channels,
Linear head, calibrated the same way) with ``--dask-samples`` inputs in batches of 32, so one
evaluation takes long against Dask's per-task overhead. Levels 0.1-0.9, step ``clip``, every
Conv/Linear layer, ``stop_below=-1`` (every point measured: the same work for every method).

Measured, the methods taking turns ``--repeat`` times (best time kept):

1. ``pm.sensitivity`` in this process (torch threads from ``--threads``, default 1);
2. ``pm.sensitivity(..., executor=client)`` on a ``LocalCluster`` of 1 worker, and of N workers
   (processes, 1 thread each, without Dask's ``MALLOC_TRIM_THRESHOLD_``: see the README), started
   before the timing (the first sweep on a fresh cluster
   is untimed: it ships the model and warms the workers);
3. that every point equals the local sweep's, and the bytes per point: what the client submits
   (the task, pickled) and what workers send each other (Dask's ``transfer_outgoing_bytes_total``),
   against the model's size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import cloudpickle
import torch
from torch import nn

import prune_magic as pm

LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)
SPEEDUP = 1.6  # N=2 workers over the local sweep
BYTES = 0.01  # bytes per point over the model's size, at most


def agreement(batches: list[torch.Tensor], labels: list[torch.Tensor]) -> Callable[[nn.Module], float]:
    samples = sum(len(y) for y in labels)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        return (
            sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(batches, labels, strict=True)) / samples
        )

    return evaluate


def sweep(
    model: nn.Module, evaluate: Callable[[nn.Module], float], client: object = None
) -> tuple[float, pm.Sensitivity]:
    started = time.perf_counter()
    result = pm.sensitivity(model, evaluate, levels=LEVELS, stop_below=-1, executor=client)
    if not result.complete:
        raise SystemExit(f"the sweep stopped: {result.stopped}")
    return time.perf_counter() - started, result


def bench(workers: int, samples: int, repeat: int, threads: int, missed: list[str]) -> None:
    del threads  # this process's torch threads are set by the caller; each worker runs one
    import dask
    from distributed import Client, LocalCluster
    from sensitivity import SmallCNN, calibrate, centre_head, table

    torch.manual_seed(0)
    model = SmallCNN()
    x = torch.randn(samples, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    batches = list(x.split(32))
    calibrate(model, batches)
    centre_head(model, batches)
    with torch.no_grad():
        labels = [model(b).argmax(1) for b in batches]
    evaluate = agreement(batches, labels)
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    data_bytes = sum(t.numel() * t.element_size() for t in batches + labels)
    t = time.perf_counter()
    evaluate(model)
    print(
        f"\nDask: small CNN on {samples} samples (batches of 32); one evaluation {time.perf_counter() - t:.3f} s;"
        f" model {model_bytes / 1e3:.0f} kB, eval data {data_bytes / 1e6:.1f} MB (sent once per worker)"
    )
    # Dask's workers set MALLOC_TRIM_THRESHOLD_, which makes glibc give back (and the next batch fault
    # in again) every large activation: torch's convolutions ran 2x slower in a worker than here
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    clusters = {
        n: LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
        )
        for n in sorted({1, workers})
    }
    clients = {n: Client(cluster) for n, cluster in clusters.items()}
    try:

        def one_evaluation(dask_worker: object = None) -> float:
            started = time.perf_counter()
            evaluate(model)
            return time.perf_counter() - started

        print(
            f"one evaluation here {one_evaluation():.3f} s, on a worker {min(clients[1].run(one_evaluation).values()):.3f} s"
        )
        for client in clients.values():  # untimed: starts the workers' torch, ships a first payload
            sweep(model, evaluate, client)
        times: dict[str, list[float]] = {"local": [], **{f"dask {n}": [] for n in clients}}
        local: pm.Sensitivity | None = None
        equal = True
        submitted: list[int] = []
        moved = 0
        for _ in range(repeat):
            seconds, local = sweep(model, evaluate)
            times["local"].append(seconds)
            for n, client in clients.items():
                before = client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total)
                submit = client.submit

                def spy(
                    fn: object, *args: object, _submit: Callable[..., object] = submit, **kwargs: object
                ) -> object:
                    submitted.append(len(cloudpickle.dumps((fn, args, kwargs))))
                    return _submit(fn, *args, **kwargs)

                client.submit = spy  # type: ignore[method-assign]
                try:
                    seconds, result = sweep(model, evaluate, client)
                finally:
                    del client.submit
                after = client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total)
                moved = max(moved, sum(after.values()) - sum(before.values()))
                times[f"dask {n}"].append(seconds)
                for name, curve in result.curves.items():
                    for level, mine, theirs in zip(LEVELS, curve, local.curves[name], strict=True):
                        if mine != theirs:
                            print(f"  MISMATCH dask {n} {name} {level:g}: {mine} vs local {theirs}")
                equal &= result.curves == local.curves and result.baseline == local.baseline
                print(
                    f"  local {times['local'][-1]:.2f} s, dask {n}: {seconds:.2f} s; load {os.getloadavg()[0]:.2f}"
                )
        assert local is not None
        points = local.evaluations - 1
        best = {k: min(v) for k, v in times.items()}
        rows = [["sweep", "wall (s), every run", "best (s)", "speedup vs local", "points equal to local"]]
        for k, v in times.items():
            rows.append(
                [k, " / ".join(f"{s:.2f}" for s in v), f"{best[k]:.2f}", f"{best['local'] / best[k]:.2f}x",
                 "-" if k == "local" else ("yes" if equal else "NO")]
            )  # fmt: skip
        print(
            f"\n{points} points per sweep, {torch.get_num_threads()} torch thread(s) here, {os.cpu_count()} cpus"
        )
        print(table(rows, right={2, 3}))
        per_point = max(submitted)
        print(
            f"bytes per point: submitted (the task, pickled) at most {per_point} B, between workers"
            f" (transfer_outgoing_bytes_total) {moved / points:.0f} B per point; the model is {model_bytes} B:"
            f" {100 * (per_point + moved / points) / model_bytes:.3f}%"
        )
        speedup = best["local"] / best[f"dask {workers}"]
        if speedup < SPEEDUP:
            missed.append(f"dask {workers} workers: {speedup:.2f}x the local sweep, goal >={SPEEDUP:g}x")
        if (per_point + moved / points) > BYTES * model_bytes:
            missed.append("bytes per point above 1% of the model")
        if not equal:
            missed.append("a Dask sweep differs from the local one (a bug)")
    finally:
        for client in clients.values():
            client.close()
        for cluster in clusters.values():
            cluster.close()
