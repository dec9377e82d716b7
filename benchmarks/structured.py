"""Benchmark the ``structured`` step against Torch-Pruning called directly, on ResNet-18/50 shapes.

Usage::

    .venv/bin/python benchmarks/structured.py [--threads 1] [--repeat 3] [--size 224]

Both models are built here (torchvision-style ResNet-18: BasicBlocks [2, 2, 2, 2]; ResNet-50:
Bottlenecks [3, 4, 6, 3], expansion 4; stem conv 7x7/2 + max pool, average pool + fc to 1000
classes; seeded default initialisation, eval mode, nothing downloaded). For each model, in one
run, it measures:

1. the wall time of ``pm.prune(model, "structured amount=0.5", example_input=x, report=False)``
   and of the equivalent direct Torch-Pruning call, ``tp.pruner.MetaPruner(model, x,
   importance=GroupMagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[model.fc]).step()``
   (constructor included: it builds the dependency graph). Best of ``--repeat``, each on a fresh
   ``copy.deepcopy`` of the pristine model made outside the timed region, the two interleaved.
2. that both give the same architecture (parameter count and every tensor's shape; also
   whether the weights are identical);
3. parameters and MACs (``pm.report(...).macs``, PyTorch's FLOP counter) before and after;
4. the median CPU latency of the dense and the pruned model at batch 1 and 32, runs
   interleaved so load changes hit both;
5. for information: ``pm.prune(..., report=True)`` (adds MAC counting and latency passes), and
   where the time of one ``report=False`` call goes (engine functions wrapped with timers).

Torch threads are set from ``--threads`` here (the library never sets them).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib
import importlib.metadata
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch
import torch_pruning as tp
from common import arguments, footer, header, interleaved, timing
from torch import nn

import prune_magic as pm

pm_prune_module = importlib.import_module("prune_magic.engine.prune")  # the module, not pm.prune
pm_structured = importlib.import_module("prune_magic.engine.structured")

RECIPE = "structured amount=0.5"
AMOUNT = 0.5

# goals
PRUNE_VS_TP = 1.2  # our prune time over Torch-Pruning's
LATENCY_SPEEDUP, WHEN_MACS_FALL = 2.0, 3.0  # at batch 32: >=2x faster when MACs fall >=3x


# ---------------------------------------------------------------------------- models


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 (v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(inplanes: int, planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class ResNet(nn.Module):
    def __init__(
        self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages = 64, []
        for i, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
            stage = []
            for j in range(blocks):
                stage.append(block(inplanes, planes, 2 if i > 0 and j == 0 else 1))
                inplanes = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


MODELS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "ResNet-18": (BasicBlock, [2, 2, 2, 2]),
    "ResNet-50": (Bottleneck, [3, 4, 6, 3]),
}


def build(name: str, seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    block, layers = MODELS[name]
    return ResNet(block, layers).eval()


# ---------------------------------------------------------------------------- the calls


def prune_pm(model: nn.Module, x: torch.Tensor, report: bool = False) -> Any:
    return pm.prune(model, RECIPE, example_input=x, report=report)


def prune_tp(model: ResNet, x: torch.Tensor) -> None:
    tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=AMOUNT,
        ignored_layers=[model.fc],
    ).step()


def timed(fn: Callable[[], object]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def latencies(models: dict[str, nn.Module], x: torch.Tensor, budget: float, least: int) -> tuple[dict, int]:
    """Median forward time per model (no grad); runs interleaved so load changes hit all alike."""
    one = 0.0
    for m in models.values():  # warm up (first calls pick and cache kernels)
        m(x)
        start = time.perf_counter()
        m(x)
        one += time.perf_counter() - start
    runs = int(min(101, max(least, budget / max(one, 1e-6))))
    return interleaved(models, x, runs), runs


@contextlib.contextmanager
def phase_timers() -> Iterator[dict[str, float]]:
    """Wrap engine functions with timers (no behaviour change) for a breakdown of one call."""
    spent: dict[str, float] = {}
    targets = [
        (pm_structured, "trace", "DepGraph build + cat sizes + output shapes (trace)"),
        (pm_structured, "groups", "dependency groups (groups)"),
        (pm_structured, "_scores", "importance (_scores)"),
        (pm_prune_module, "apply_structured", "apply_structured"),
        (pm_structured, "check_forward", "forward of the pruned model (check_forward)"),
    ]

    with contextlib.ExitStack() as stack:
        for module, attr, label in targets:
            stack.enter_context(mock.patch.object(module, attr, timing(spent, label, getattr(module, attr))))
        yield spent


# ---------------------------------------------------------------------------- report


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def print(self, title: str) -> None:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) for i, h in enumerate(self.head)]

        def line(values: list[str]) -> str:
            out = [values[0].ljust(widths[0])]
            out += [v.rjust(w) for v, w in zip(values[1:-1], widths[1:-1])]
            return "| " + " | ".join([*out, values[-1].ljust(widths[-1])]) + " |"

        print(f"\n{title}")
        print(line(self.head))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in self.rows:
            print(line(r))
        sys.stdout.flush()


def goal(text: str, ok: bool) -> str:
    return f"{text} {'met' if ok else 'MISSED'}"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def bench(name: str, size: int, repeat: int, budget: float) -> list[str]:
    model = build(name)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    dense_params = params(model)
    missed: list[str] = []

    # warm-up, not counted: first forward passes at these shapes pick and cache kernels
    prune_pm(copy.deepcopy(model), x)
    prune_tp(copy.deepcopy(model), x)

    pm_times, tp_times, tp_build, tp_step = [], [], [], []
    pruned_pm = pruned_tp = model
    for _ in range(repeat):
        fresh = copy.deepcopy(model)
        seconds, _ = timed(lambda m=fresh: prune_pm(m, x))
        pm_times.append(seconds)
        pruned_pm = fresh

        fresh = copy.deepcopy(model)
        gc.collect()
        start = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            fresh,
            x,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=AMOUNT,
            ignored_layers=[fresh.fc],
        )
        built = time.perf_counter()
        pruner.step()
        done = time.perf_counter()
        del pruner
        tp_times.append(done - start)
        tp_build.append(built - start)
        tp_step.append(done - built)
        pruned_tp = fresh
    best_pm, best_tp = min(pm_times), min(tp_times)
    i_tp = tp_times.index(best_tp)

    report_times = []
    result = None
    for _ in range(repeat):
        fresh = copy.deepcopy(model)
        seconds, result = timed(lambda m=fresh: prune_pm(m, x, report=True))
        report_times.append(seconds)
        del fresh

    fresh = copy.deepcopy(model)
    with phase_timers() as spent:
        seconds, _ = timed(lambda m=fresh: prune_pm(m, x))
    del fresh

    # architecture and weights
    shapes_pm = {k: tuple(v.shape) for k, v in pruned_pm.state_dict().items()}
    shapes_tp = {k: tuple(v.shape) for k, v in pruned_tp.state_dict().items()}
    same_shapes = shapes_pm == shapes_tp
    same_values = same_shapes and all(
        torch.equal(v, pruned_tp.state_dict()[k]) for k, v in pruned_pm.state_dict().items()
    )
    after_pm, after_tp = params(pruned_pm), params(pruned_tp)
    same_arch = same_shapes and after_pm == after_tp

    macs_dense = pm.report(model, example_input=x).macs
    macs_pruned = pm.report(pruned_pm, example_input=x).macs
    assert macs_dense is not None and macs_pruned is not None
    mac_ratio = macs_dense / macs_pruned

    lat1, runs1 = latencies({"dense": model, "pruned": pruned_pm}, x, budget, least=9)
    xb = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(2))
    lat32, runs32 = latencies({"dense": model, "pruned": pruned_pm}, xb, budget, least=5)
    del xb

    block, layers = MODELS[name]
    print(
        f"\n{name}: {block.__name__} {layers}, widths 64-128-256-512, fc {model.fc.in_features}->1000;"
        f" input 1x3x{size}x{size}"
    )

    ratio = best_pm / best_tp
    t = Table(["prune call", "prune_magic", "Torch-Pruning", "ours/TP", "goal / notes"])
    t.add(
        f"wall time (s), best of {repeat}",
        f"{best_pm:.3f}",
        f"{best_tp:.3f}",
        f"{ratio:.2f}",
        goal(f"<={PRUNE_VS_TP}", ratio <= PRUNE_VS_TP),
    )
    t.add(
        "  all runs (s)",
        " ".join(f"{s:.3f}" for s in pm_times),
        " ".join(f"{s:.3f}" for s in tp_times),
        "-",
        f"TP best run: MetaPruner() {tp_build[i_tp]:.3f} s + step() {tp_step[i_tp]:.3f} s",
    )
    t.add(
        "params after",
        f"{after_pm:,}",
        f"{after_tp:,}",
        f"{after_pm / after_tp:.3f}",
        goal("same architecture", same_arch)
        + f" ({len(shapes_pm)} tensors, same shapes: {'yes' if same_shapes else 'NO'};"
        f" identical weights: {'yes' if same_values else 'no'})",
    )
    t.print("prune_magic against Torch-Pruning")
    if ratio > PRUNE_VS_TP:
        missed.append(f"{name}: prune time ours/TP {ratio:.2f} <= {PRUNE_VS_TP}")
    if not same_arch:
        missed.append(f"{name}: same architecture")

    speed32 = lat32["dense"] / lat32["pruned"]
    t = Table(["model", "dense", "pruned", "dense/pruned", "goal / notes"])
    t.add(
        "params",
        f"{dense_params:,}",
        f"{after_pm:,}",
        f"{dense_params / after_pm:.2f}x",
        f"{after_pm / dense_params:.1%} of the parameters kept",
    )
    t.add(
        f"MACs per image ({size}x{size})",
        f"{macs_dense / 1e9:.3f}G",
        f"{macs_pruned / 1e9:.3f}G",
        f"{mac_ratio:.2f}x",
        f"{macs_pruned / macs_dense:.1%} of the MACs kept",
    )
    t.add(
        "latency b=1 (ms)",
        ms(lat1["dense"]),
        ms(lat1["pruned"]),
        f"{lat1['dense'] / lat1['pruned']:.2f}x",
        f"median of {runs1} interleaved runs; {lat1['dense'] / lat1['pruned'] / mac_ratio:.0%} of the MAC ratio;"
        " no goal at batch 1",
    )
    if mac_ratio >= WHEN_MACS_FALL:
        verdict = goal(
            f">={LATENCY_SPEEDUP:g}x (MACs fell >={WHEN_MACS_FALL:g}x)", speed32 >= LATENCY_SPEEDUP
        )
        if speed32 < LATENCY_SPEEDUP:
            missed.append(f"{name}: batch-32 latency {speed32:.2f}x >= {LATENCY_SPEEDUP:g}x")
    else:
        verdict = f"MACs fell only {mac_ratio:.2f}x (< {WHEN_MACS_FALL:g}x): goal not applicable"
    t.add(
        "latency b=32 (ms)",
        ms(lat32["dense"]),
        ms(lat32["pruned"]),
        f"{speed32:.2f}x",
        f"median of {runs32} interleaved runs; {speed32 / mac_ratio:.0%} of the MAC ratio; {verdict}",
    )
    t.print("dense against pruned (prune_magic's result; CPU, no grad)")

    assert result is not None and result.latency_before is not None and result.latency_after is not None
    print(
        f"\npm.prune(..., report=True): best {min(report_times):.3f} s of"
        f" {' '.join(f'{s:.3f}' for s in report_times)} s ({min(report_times) / best_pm:.1f}x report=False);"
        f" its own batch-1 latency {result.latency_before * 1e3:.1f} -> {result.latency_after * 1e3:.1f} ms"
        f" ({result.latency_before / result.latency_after:.2f}x)"
    )
    inner = sum(v for k, v in spent.items() if k != "apply_structured")
    parts = [f"{label} {s:.3f}" for label, s in spent.items() if label != "apply_structured"]
    rest = spent.get("apply_structured", 0.0) - spent.get(
        "DepGraph build + cat sizes + output shapes (trace)", 0.0
    )
    rest -= spent.get("importance (_scores)", 0.0) + spent.get("dependency groups (groups)", 0.0)
    print(
        f"where one report=False call goes (s; separate run of {seconds:.3f} s, engine functions wrapped):"
        f"\n  {'; '.join(parts)};"
        f"\n  rest of apply_structured (undo capture, group.prune) {rest:.3f};"
        f" outside these {seconds - inner - rest:.3f}"
    )
    sys.stdout.flush()
    return missed


def main() -> None:
    parser = arguments(__doc__, repeat=3, what="prune runs per method")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument(
        "--budget",
        type=float,
        default=15.0,
        help="seconds per latency comparison (at least 9 runs at batch 1, 5 at batch 32)",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    started = header(f", torch-pruning {importlib.metadata.version('torch-pruning')}")
    print(
        f"input 1x3x{args.size}x{args.size} (latency also at batch 32); recipe {RECIPE!r}; repeat {args.repeat}"
        " (best time, each run on a fresh deepcopy made outside the timed region; one untimed warm-up each)"
    )
    sys.stdout.flush()
    missed: list[str] = []
    for name in args.models.split(","):
        missed += bench(name.strip(), args.size, args.repeat, args.budget)
    footer(started, missed)


if __name__ == "__main__":
    main()
