"""Benchmark the sensitivity sweep (``pm.sensitivity``) against the naive loop, in one run.

Usage::

    .venv/bin/python benchmarks/sensitivity.py [--repeat 2] [--cnn-repeat 6] [--size 64] [--threads 1] [--breakdown]
    .venv/bin/python benchmarks/sensitivity.py --dask 2   # on a Dask LocalCluster: see sensitivity_dask.py

Two models are built here from a fixed seed (nothing is downloaded): a small CNN (three
Conv+BN+ReLU layers of 32-64 channels on 1x28x28 inputs, a Linear head to 10 classes) and a
ResNet-18-shaped model (torchvision's layout: BasicBlocks [2, 2, 2, 2], widths 64-128-256-512,
7x7/2 stem + max pool, average pool + fc to 10 classes) on 3x``--size``x``--size`` inputs.
Their BatchNorm running statistics are set by one pass over the benchmark's inputs in train
mode (exact averages), then both stay in eval mode, and the head's bias is shifted so that
every class's mean logit over those inputs is zero: the dense predictions spread over all 10
classes, so agreement can collapse towards chance (0.1), as a trained model's accuracy would,
instead of staying at the share of one dominant class.

The metric is the top-1 agreement with the dense model's own predictions on 256 fixed random
samples (a list of 8 batches of 32, fed in the same order every time). Levels 0.1, 0.3, 0.5,
0.7, 0.9, step ``clip``, every Conv/Linear layer. For each model it measures, ``--repeat`` times (``--cnn-repeat`` for the CNN)
with the two methods taking turns (so a change of load hits both), the best time kept:

1. the naive loop: the baseline once, then for every layer and level ``copy.deepcopy(model)``,
   ``pm.prune(copy, "clip amount=<level> layers=<layer>", report=False)`` and one evaluation;
2. ``pm.sensitivity`` with default settings (replay of the outputs before the pruned layer,
   recorded during the baseline; early stop below half the baseline; in place);
3. that both give the same metric at every point ``pm.sensitivity`` measured, in every run
   (points skipped by the early stop are counted), and that the model is bit-identical after.

With ``--breakdown``, once more each: ``pm.sensitivity`` with ``stop_below=-1`` (no early stop),
and with ``stop_below=-1`` and the replay switched off (the engine's ``_Prefix`` patched to
``_NoPrefix`` with ``unittest.mock``; the library is not changed). The last table has both
models: every run's time, the ratio of the best times, whether all points are equal, the
torch thread count and the worst 1-minute load average seen after a round.

Torch threads are set from ``--threads`` here (the library never sets them).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from math import nan
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch
from common import footer, header
from structured import BasicBlock, ResNet
from torch import nn

import prune_magic as pm

engine_sensitivity = importlib.import_module("prune_magic.engine.sensitivity")  # the module

LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)
SAMPLES, BATCH = 256, 32

# goal
SPEEDUP = 3.0  # naive wall time over pm.sensitivity's (default settings)


# ---------------------------------------------------------------------------- models


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()
        self.conv3, self.bn3, self.relu3 = nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()
        self.pool1, self.pool2 = nn.MaxPool2d(2), nn.MaxPool2d(2)  # one module per call
        self.fc = nn.Linear(64 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))  # 14x14
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))  # 7x7
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(x, 1))


@torch.no_grad()
def calibrate(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Set every BatchNorm's running statistics to the exact averages over ``batches``; eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    for x in batches:
        model(x)
    return model.eval()


@torch.no_grad()
def centre_head(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Shift the head's bias so that each class's mean logit over ``batches`` is zero."""
    logits = torch.cat([model(x) for x in batches])
    model.fc.bias -= logits.mean(0)


def agreement_eval(batches: list[torch.Tensor], labels: list[torch.Tensor]) -> Callable[[nn.Module], float]:
    """Top-1 agreement with ``labels`` (the dense model's predictions), same batches in the same order."""

    @torch.no_grad()
    def agreement(model: nn.Module) -> float:
        hits = 0
        for x, y in zip(batches, labels, strict=True):
            hits += int((model(x).argmax(1) == y).sum())
        return hits / SAMPLES

    return agreement


# ---------------------------------------------------------------------------- the methods


@dataclass
class Run:
    """One sweep: metric per layer and level (None: not measured), time, evaluations."""

    label: str
    curves: dict[str, list[float | None]]
    baseline: float
    seconds: float
    evaluations: int
    layer_seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    result: pm.Sensitivity | None = None
    stopped: str = ""  # why pm.sensitivity stopped before the end (an error in a point); "" when complete


def naive(model: nn.Module, evaluate: Callable[[nn.Module], float], names: list[str]) -> Run:
    """The baseline once; then per layer and level: deepcopy, prune that copy, evaluate."""
    gc.collect()
    started = time.perf_counter()
    baseline, evaluations, copy_s = evaluate(model), 1, 0.0
    curves: dict[str, list[float | None]] = {}
    layer_seconds: dict[str, float] = {}
    for name in names:
        layer_started = time.perf_counter()
        curves[name] = []
        for level in LEVELS:
            t = time.perf_counter()
            mine = copy.deepcopy(model)
            pm.prune(mine, f"clip amount={level!r} layers={name}", report=False)
            copy_s += time.perf_counter() - t
            curves[name].append(evaluate(mine))
            evaluations += 1
            del mine
        layer_seconds[name] = time.perf_counter() - layer_started
    seconds = time.perf_counter() - started
    return Run("naive", curves, baseline, seconds, evaluations, layer_seconds, {"copy_prune_s": copy_s})


def swept(
    label: str,
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    replay: bool = True,
    **kwargs: object,
) -> Run:
    """``pm.sensitivity`` with ``kwargs``; per-layer seconds from the progress callback."""
    ends: list[float] = []  # end of each evaluation: the first is the baseline's

    @functools.wraps(evaluate)  # keeps the metric's name
    def timed_eval(m: nn.Module) -> float:
        value = evaluate(m)
        ends.append(time.perf_counter())
        return value

    points: list[tuple[str, float]] = []

    def progress(partial: pm.Sensitivity) -> None:  # layers are swept in order: the last one started
        now = time.perf_counter()
        points.append(([n for n, c in partial.curves.items() if any(v is not None for v in c)][-1], now))

    patch = (
        contextlib.nullcontext()
        if replay
        else mock.patch.object(engine_sensitivity, "_Prefix", return_value=engine_sensitivity._NoPrefix())
    )
    gc.collect()
    started = time.perf_counter()
    with patch:
        result = pm.sensitivity(model, timed_eval, levels=LEVELS, step="clip", progress=progress, **kwargs)
    seconds = time.perf_counter() - started
    layer_seconds: dict[str, float] = {}
    previous = ends[0]
    for name, at in points:
        layer_seconds[name] = layer_seconds.get(name, 0.0) + at - previous
        previous = at
    run = Run(label, result.curves, result.baseline, seconds, result.evaluations, layer_seconds)
    run.extra["engine_s"] = result.seconds
    run.extra["baseline_s"] = ends[0] - started
    run.result, run.stopped = result, result.stopped
    return run


# ---------------------------------------------------------------------------- checks and tables


@dataclass
class Comparison:
    compared: int = 0
    skipped: int = 0  # None in the sweep (early stop)
    mismatches: list[tuple[str, float, float, float]] = field(default_factory=list)  # layer, level, pm, naive


def compare(run: Run, reference: Run) -> Comparison:
    c = Comparison()
    if run.baseline != reference.baseline:
        c.mismatches.append(("(baseline)", float("nan"), run.baseline, reference.baseline))
    for name, metrics in reference.curves.items():
        for level, mine, theirs in zip(LEVELS, run.curves[name], metrics, strict=True):
            if mine is None:
                c.skipped += 1
                continue
            c.compared += 1
            if mine != theirs:
                c.mismatches.append((name, level, mine, theirs))  # type: ignore[arg-type]
    return c


def table(rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right if right is not None else set(range(1, len(rows[0])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(r: list[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "| " + " | ".join(cells) + " |"

    out = [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(r) for r in rows[1:]])


def hits(metric: float) -> str:
    return f"{round(metric * SAMPLES)}/{SAMPLES}"


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.seconds)


def same_state(model: nn.Module, pristine: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == pristine.keys() and all(
        torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in pristine.items()
    )


@dataclass
class Summary:
    """One model's line in the final table."""

    title: str
    naive_s: list[float]
    default_s: list[float]
    equal: bool
    compared: int
    skipped: int
    restored: bool
    load: float


def bench(
    title: str, model: nn.Module, x: torch.Tensor, repeat: int, breakdown: bool, missed: list[str]
) -> Summary:
    batches = list(x.split(BATCH))
    calibrate(model, batches)
    centre_head(model, batches)
    with torch.no_grad():
        labels = [model(b).argmax(1) for b in batches]
    evaluate = agreement_eval(batches, labels)
    counts = torch.bincount(torch.cat(labels), minlength=10).tolist()
    names = [t.name.rpartition(".")[0] for t in pm.select(model) if t.name.endswith(".weight")]
    n_weights = sum(t.param.numel() for t in pm.select(model))
    evaluate(model)  # warm-up (first calls pick kernels)
    t = time.perf_counter()
    evaluate(model)
    one_eval = time.perf_counter() - t
    t = time.perf_counter()
    copy.deepcopy(model)
    one_copy = time.perf_counter() - t
    print(f"\n{title}; input {tuple(x.shape[1:])}, {SAMPLES} samples in {len(batches)} batches of {BATCH}")
    print(
        f"{len(names)} layers ({n_weights:,} selected weights); dense predictions per class {counts}; "
        f"one evaluation {one_eval:.3f} s, one deepcopy {one_copy * 1e3:.1f} ms"
    )
    sys.stdout.flush()
    pristine = {k: v.clone() for k, v in model.state_dict().items()}

    runs: dict[str, list[Run]] = {k: [] for k in ("naive", "default", "noreplay", "nostop")}
    restored = True
    loads: list[float] = []
    for i in range(repeat):  # the methods take turns, so load changes hit all alike
        runs["naive"].append(naive(model, evaluate, names))
        runs["default"].append(swept("default", model, evaluate))
        restored &= same_state(model, pristine)
        if breakdown and i == 0:
            runs["noreplay"].append(swept("noreplay", model, evaluate, replay=False, stop_below=-1))
            restored &= same_state(model, pristine)
            runs["nostop"].append(swept("nostop", model, evaluate, stop_below=-1))
            restored &= same_state(model, pristine)
        loads.append(load())
        print(
            "  times (s): "
            + ", ".join(f"{k} {v[-1].seconds:.1f}" for k, v in runs.items() if v)
            + f"; load {loads[-1]:.2f}"
        )
        sys.stdout.flush()
    nv, df = best(runs["naive"]), best(runs["default"])

    print("\npm.sensitivity, default settings (the library's own summary; '-': skipped by the early stop):")
    print(df.result)

    kinds = [k for k in ("default", "nostop", "noreplay") if runs[k]]
    checks = {k: compare(best(runs[k]), nv) for k in kinds}
    every = {k: [compare(r, n) for r, n in zip(runs[k], runs["naive"], strict=False)] for k in kinds}
    stops = {k: r.stopped for k in checks for r in runs[k] if r.stopped}
    for k, why in stops.items():
        print(f"  STOPPED ({k}): pm.sensitivity ended before the last point: {why}")
        missed.append(f"{title}: the {k} sweep stopped before the end (a bug): {why}")
    speedup = nv.seconds / df.seconds
    goal = f">={SPEEDUP:g}x {'met' if speedup >= SPEEDUP else 'MISSED'}"
    if speedup < SPEEDUP:
        missed.append(f"{title}: speedup {speedup:.2f}x >= {SPEEDUP:g}x (short by {SPEEDUP / speedup:.2f}x)")

    def agree(k: str) -> str:
        c = checks[k]
        text = f"{c.compared - len(c.mismatches)}/{c.compared} points equal"
        if c.skipped:
            text += f", {c.skipped} not measured ({'the sweep stopped' if stops.get(k) else 'early stop'})"
        return text

    for k, cs in every.items():
        if any(c.mismatches for c in cs):
            missed.append(f"{title}: the {k} sweep differs from the naive loop (a bug)")
    copy_s = nv.extra["copy_prune_s"]
    rows = [
        ["method", "wall (s)", "evaluations", "speedup vs naive", "same metric as naive", "goal / notes"],
        [
            "naive: deepcopy + pm.prune + eval per point",
            f"{nv.seconds:.2f}",
            str(nv.evaluations),
            "1.00",
            "-",
            f"baseline once; deepcopy + prune {copy_s:.2f} s of it",
        ],
    ]
    if breakdown:
        nr, ns = runs["noreplay"][0], runs["nostop"][0]
        rows += [
            [
                "pm.sensitivity, no replay, stop_below=-1",
                f"{nr.seconds:.2f}",
                str(nr.evaluations),
                f"{nv.seconds / nr.seconds:.2f}",
                agree("noreplay"),
                "in place only (_Prefix -> _NoPrefix); run once",
            ],
            [
                "pm.sensitivity, stop_below=-1",
                f"{ns.seconds:.2f}",
                str(ns.evaluations),
                f"{nv.seconds / ns.seconds:.2f}",
                agree("nostop"),
                "in place + replay; run once",
            ],
        ]
    rows.append(
        [
            "pm.sensitivity (defaults)",
            f"{df.seconds:.2f}",
            str(df.evaluations),
            f"{speedup:.2f}",
            agree("default"),
            goal + "; in place + replay + early stop",
        ]
    )
    print(
        f"\nwall time, best of {repeat} (naive and defaults take turns); "
        f"model put back bit-exactly after every sweep: {'yes' if restored else 'NO'}"
    )
    print(table(rows, right={1, 2, 3}))
    if not restored:
        missed.append(f"{title}: the model was not put back bit-exactly")
    for k, c in checks.items():
        for name, level, mine, theirs in c.mismatches:
            print(f"  MISMATCH ({k}) {name} {level:g}: {hits(mine)} vs {hits(theirs)}")

    if breakdown:
        nr, ns = runs["noreplay"][0], runs["nostop"][0]
        skipped = len(names) * len(LEVELS) - (df.evaluations - 1)
        breakdown_rows = [
            ["trick", "from -> to", "saved (s)", "factor", "notes"],
            [
                "in place (prune + restore, no deepcopy)",
                f"{nv.seconds:.2f} -> {nr.seconds:.2f}",
                f"{nv.seconds - nr.seconds:.2f}",
                f"{nv.seconds / nr.seconds:.2f}x",
                f"deepcopy + pm.prune took {copy_s:.2f} s in the naive loop",
            ],
            [
                "replay of the outputs before the layer",
                f"{nr.seconds:.2f} -> {ns.seconds:.2f}",
                f"{nr.seconds - ns.seconds:.2f}",
                f"{nr.seconds / ns.seconds:.2f}x",
                "recorded during the baseline: every level runs only the layer and what follows",
            ],
            [
                "early stop (below half the baseline)",
                f"{ns.seconds:.2f} -> {df.seconds:.2f}",
                f"{ns.seconds - df.seconds:.2f}",
                f"{ns.seconds / df.seconds:.2f}x",
                f"{skipped} of {len(names) * len(LEVELS)} points skipped",
            ],
        ]
        print("\nwhere the speedup comes from (each step against the one before; single runs, noisy)")
        print(table(breakdown_rows, right={2, 3}))

    per_layer = [["layer", "naive (s)", "defaults (s)", "points"]]
    for name in names:
        measured = sum(v is not None for v in df.curves[name])
        per_layer.append(
            [
                name,
                f"{nv.layer_seconds[name]:.2f}",
                f"{df.layer_seconds.get(name, nan):.2f}",
                f"{measured}/{len(LEVELS)}",
            ]
        )
    print("\nper layer: seconds of its 5 points (defaults: of the points measured before the early stop)")
    print(table(per_layer))
    sys.stdout.flush()
    total = checks["default"]
    return Summary(
        title.split(":")[0],
        [r.seconds for r in runs["naive"]],
        [r.seconds for r in runs["default"]],
        not any(c.mismatches for c in every["default"]),
        total.compared,
        total.skipped,
        restored,
        max(loads),
    )


def summary(rows: list[Summary]) -> None:
    """Both models in one table: the result the goal is about."""
    out = [
        [
            "model",
            "naive (s)",
            "pm.sensitivity (s)",
            "ratio",
            f"goal >={SPEEDUP:g}x",
            "points equal",
            "restored",
            "threads",
            "load (1 min, worst)",
        ]
    ]
    for r in rows:
        ratio = min(r.naive_s) / min(r.default_s)
        out.append(
            [
                r.title,
                " / ".join(f"{v:.2f}" for v in r.naive_s),
                " / ".join(f"{v:.2f}" for v in r.default_s),
                f"{ratio:.2f}x",
                "met" if ratio >= SPEEDUP else "MISSED",
                f"{'yes' if r.equal else 'NO'} ({r.compared} compared, {r.skipped} early-stopped)",
                "yes" if r.restored else "NO",
                str(torch.get_num_threads()),
                f"{r.load:.2f}",
            ]
        )
    print("\nsummary: every run's wall time (runs take turns); ratio of the best times")
    print(table(out, right={1, 2, 3, 7, 8}))


def load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each method; the best time is kept")
    parser.add_argument("--size", type=int, default=64, help="ResNet-18 input height and width")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--cnn-repeat", type=int, default=6, help="runs of each method on the small CNN (a sweep takes ~1 s)"
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="also time no-replay and no-early-stop sweeps"
    )
    parser.add_argument(
        "--dask",
        type=int,
        metavar="N",
        help="instead: the sweep on a LocalCluster of 1 and N workers (sensitivity_dask.py)",
    )
    parser.add_argument("--dask-samples", type=int, default=2048, help="with --dask: the eval set's size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = header()
    if args.dask:
        from sensitivity_dask import bench as dask_bench

        missed_dask: list[str] = []
        dask_bench(args.dask, args.dask_samples, args.repeat, args.threads, missed_dask)
        footer(started, missed_dask)
        return
    print(
        f"levels {','.join(f'{v:g}' for v in LEVELS)}, step clip, every Conv/Linear layer; "
        f"metric: top-1 agreement with the dense model on {SAMPLES} fixed random samples; "
        f"repeat {args.repeat} (best time)"
    )
    print(
        "naive: copy.deepcopy(model) + pm.prune(copy, 'clip amount=<level> layers=<layer>', report=False) per point"
    )
    missed: list[str] = []
    rows: list[Summary] = []

    torch.manual_seed(0)
    cnn = SmallCNN()
    x = torch.randn(SAMPLES, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    rows.append(
        bench(
            "small CNN: 3x (Conv 3x3 + BN + ReLU), 32-64-64 channels, Linear 3136->10",
            cnn,
            x,
            args.cnn_repeat,
            args.breakdown,
            missed,
        )
    )

    torch.manual_seed(0)
    resnet = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10)
    x = torch.randn(SAMPLES, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    rows.append(
        bench(
            "ResNet-18: BasicBlock [2, 2, 2, 2], widths 64-128-256-512, fc 512->10",
            resnet,
            x,
            args.repeat,
            args.breakdown,
            missed,
        )
    )

    summary(rows)
    footer(started, missed)


if __name__ == "__main__":
    main()
