"""Interaction latency of the %%prune dashboard: slider moved -> model re-pruned, re-evaluated, redrawn.

Run: .venv/bin/python benchmarks/dashboard.py [--moves 8]

The dashboard applies a move on a thread of its own; the time of ``slider.value = v``
followed by ``board.wait()`` in-process is the time from the change reaching the kernel to
the updated summary and figures being ready to send; the times at which the summary (the
numbers) and the sparsity chart were set are recorded too. Measured on:

- the quickstart MLP (64-256-128-10 trained briefly on scikit-learn's digits), eval on the
  450-sample test split; goals: numbers <= 0.1 s, the chart <= 0.2 s (the browser's goals, here
  without the browser's share), the whole move <= 0.3 s;
- the same MLP with a structured recipe (``structured amount=0.5``, an example input: the cell
  times the model, a slider move does not); goal <= 0.3 s a move;
- a ResNet-18-shaped model (3x64x64 input, 10 classes), eval on 256 samples; goal <= 3 s.

Each move alternates between two amounts so every move re-prunes; the table gives the
median and the worst move, and where the median move's time goes. The time from a key press
in JupyterLab to the numbers and the chart is measured by ``tests/browser/test_dashboards.py``
(``tests/browser/artifacts/latency.json``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch
from common import footer, header, timing
from sklearn.datasets import load_digits
from structured import BasicBlock, ResNet
from torch import nn

import prune_magic as pm
from prune_magic import plots, widgets
from prune_magic.engine.evaluate import accuracy
from prune_magic.engine.report import histogram

GOALS = {"quickstart MLP": 0.3, "quickstart MLP, structured": 0.3, "ResNet-18 (3x64x64)": 3.0}
PARTS = {"numbers": 0.1, "chart": 0.2}  # goals for the summary and the sparsity chart (quickstart MLP)


def quickstart() -> tuple[nn.Module, Callable[[nn.Module], float]]:
    torch.manual_seed(0)
    digits = load_digits()
    X = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(X))
    train, test = order[:1347], order[1347:]
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(10):
        for batch in train[torch.randperm(len(train))].split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[batch]), y[batch]).backward()
            opt.step()
    return model.eval(), accuracy((X[test], y[test]))


def resnet18() -> tuple[nn.Module, Callable[[nn.Module], float]]:
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10).eval()
    X = torch.randn(256, 3, 64, 64)
    with torch.no_grad():
        y = torch.cat([model(b).argmax(1) for b in X.split(64)])

    def agreement(m: nn.Module) -> float:
        with torch.no_grad():
            return sum(int((m(a).argmax(1) == b).sum()) for a, b in zip(X.split(64), y.split(64))) / len(X)

    return model, agreement


def timed_parts() -> tuple[dict[str, float], list[Any]]:
    """Patches that time the pieces of an update."""
    spent: dict[str, float] = {}
    patches = [
        mock.patch.object(pm.engine, "prune", timing(spent, "prune + eval (engine.prune)", pm.engine.prune)),
        mock.patch.object(
            widgets.PruneDashboard,
            "_show",
            timing(spent, "redraw (summary, charts)", widgets.PruneDashboard._show),
        ),
        mock.patch.object(plots, "png", timing(spent, "of which full figures (plots.png)", plots.png)),
    ]
    return spent, patches


def bench(
    name: str,
    make: Callable[[], tuple[nn.Module, Callable[[nn.Module], float]]],
    moves: int,
    recipe: str = "clip amount={} scope=global",
    example: torch.Tensor | None = None,
) -> list[str]:
    model, evaluate = make()
    rerun = widgets.PruneCall(model, evaluate, example_input=example, tag="bench")
    start = {n: histogram(p) for n, p in model.named_parameters() if n.endswith("weight")}
    board = widgets.PruneDashboard(rerun(recipe.format(0.5)), name, rerun, start=start)
    slider = board.sliders[0, "amount"]
    seen: dict[str, float] = {}  # when the summary and the chart were set, this move
    board.summary.observe(lambda _: seen.setdefault("numbers", time.perf_counter()), "value")
    board.image.observe(lambda _: seen.setdefault("chart", time.perf_counter()), "value")
    times: list[float] = []
    parts: dict[str, list[float]] = {"numbers": [], "chart": []}
    for i in range(moves):
        value = 0.8 if i % 2 == 0 else 0.6
        seen.clear()
        began = time.perf_counter()
        slider.value = value
        board.wait()
        times.append(time.perf_counter() - began)
        for part, at in seen.items():
            parts[part].append(at - began)
        assert str(board.recipe) == recipe.format(value), board.status.value
    spent, patches = timed_parts()
    for patch in patches:
        patch.start()
    try:
        slider.value = 0.7
        board.wait()
    finally:
        for patch in patches:
            patch.stop()
    t_eval = statistics.median(_time(lambda: evaluate(model)) for _ in range(3))
    median, worst = statistics.median(times), max(times)
    goal = GOALS[name]
    verdict = "met" if median <= goal else "MISSED"
    print(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} params")
    print(
        f"| slider move (s)  | median {median:.3f} | worst {worst:.3f} | goal <= {goal} (median) {verdict} |"
    )
    missed = [] if verdict == "met" else [f"{name}: median slider move {median:.3f} s > {goal} s"]
    for part, values in parts.items():
        if not values:
            continue
        middle = statistics.median(values)
        line = f"| {part} set (s) | median {middle:.3f} | worst {max(values):.3f} |"
        if name == "quickstart MLP":
            met = middle <= PARTS[part]
            line += f" goal <= {PARTS[part]} (median) {'met' if met else 'MISSED'} |"
            missed += [] if met else [f"{name}: {part} after {middle:.3f} s > {PARTS[part]} s"]
        print(line)
    print(f"| one evaluation (s) | {t_eval:.3f} | (once per move: the start state's metric is reused) |")
    print("| where one move goes (s) | " + "; ".join(f"{k} {v:.3f}" for k, v in spent.items()) + " |")
    return missed


def _time(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = header()
    missed = bench("quickstart MLP", quickstart, args.moves)
    missed += bench(
        "quickstart MLP, structured", quickstart, args.moves, "structured amount={}", torch.zeros(1, 64)
    )
    missed += bench("ResNet-18 (3x64x64)", resnet18, max(2, args.moves // 2))
    footer(started, missed)


if __name__ == "__main__":
    main()
