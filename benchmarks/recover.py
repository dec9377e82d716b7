"""Recovery after a 90% global clip of the digits MLP: no recovery, finetune, distill, gradual, int8.

    .venv/bin/python benchmarks/recover.py [--threads 1] [--repeat 3] [--seeds 0,1,2]

The quickstart's MLP (64-256-128-10) is trained 15 epochs on scikit-learn's bundled digits
(1,347 training and 450 test images; nothing is downloaded), then each recipe runs on a fresh
copy of it through ``pm.prune(model, recipe, evaluate=accuracy, train=(X_train, y_train))``.
Test accuracy after each recipe, for each seed of the dense model; the time of the ``pm.prune``
call (the best of ``--repeat`` runs) with the recipe's evaluations included (one per epoch or
step, plus before and after).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, footer, header

import prune_magic as pm

CUT = "clip amount=0.9 scope=global"
RECIPES = {
    "(a) no recovery": CUT,
    "(b) finetune 2 epochs": f"{CUT}\nfinetune epochs=2",
    "(c) distill 2 epochs": f"{CUT}\ndistill epochs=2",
    "(d) gradual, 4 steps x 1 epoch": f"{CUT} steps=4 finetune=1",
    "(e) finetune 2 epochs + int8": f"{CUT}\nfinetune epochs=2\nquantize int8",
}


def data() -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    X = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    return tuple(train_test_split(X, y, test_size=0.25, random_state=0, stratify=y))


def dense(seed: int, X_train: torch.Tensor, y_train: torch.Tensor) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(15):
        for batch in torch.randperm(len(X_train)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(X_train[batch]), y_train[batch]).backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    parser = arguments(__doc__, repeat=3)
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the dense models (default 0,1,2)")
    parser.add_argument("--grid", action="store_true", help="also: distillation's temperature x alpha grid")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = header()
    X_train, X_test, y_train, y_test = data()

    @torch.no_grad()
    def accuracy(model: nn.Module) -> float:
        return (model(X_test).argmax(1) == y_test).float().mean().item()

    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[float]] = {name: [] for name in RECIPES}
    seconds: dict[str, list[float]] = {name: [] for name in RECIPES}
    sizes: dict[str, int] = {}
    baseline = []
    for seed in seeds:
        model = dense(seed, X_train, y_train)
        baseline.append(accuracy(model))
        for name, recipe in RECIPES.items():
            best = float("inf")
            for _ in range(args.repeat):
                copy_ = copy.deepcopy(model)
                start = time.perf_counter()
                result = pm.prune(copy_, recipe, evaluate=accuracy, train=(X_train, y_train))
                best = min(best, time.perf_counter() - start)
            results[name].append(float(result.metric_after))  # type: ignore[arg-type]
            seconds[name].append(best)
            quantized = [s.quantized for s in result.steps if s.quantized is not None]
            if quantized:
                sizes[name] = quantized[0].size_after
                sizes["dense"] = quantized[0].size_before
    print(f"\ndigits MLP, test accuracy at 90% global sparsity; dense models (seeds {args.seeds}): "
          + ", ".join(f"{a:.1%}" for a in baseline))  # fmt: skip
    print(f"\n{'recipe':<34} {'accuracy per seed':<26} {'mean':>7} {'vs (a)':>8} {'time (s)':>9}")
    mean_a = statistics.mean(results["(a) no recovery"])
    for name in RECIPES:
        accs = results[name]
        mean = statistics.mean(accs)
        print(
            f"{name:<34} {' '.join(f'{a:6.1%}' for a in accs):<26} {mean:7.1%} {100 * (mean - mean_a):+7.1f}pt"
            f" {statistics.median(seconds[name]):9.3f}"
        )
    if sizes:
        print(
            f"\nstate_dict: {sizes['dense'] / 1024:.1f} KiB dense float32 -> "
            f"{sizes['(e) finetune 2 epochs + int8'] / 1024:.1f} KiB after quantize int8"
            f" ({_backend()})"
        )
    if args.grid:
        models = [dense(seed, X_train, y_train) for seed in seeds]
        print(f"\ndistill epochs=2 after {CUT}: mean accuracy over seeds {args.seeds}")
        print(f"{'temperature':>11} {'alpha':>6} {'lr=0.001':>9} {'lr=0.003':>9}")
        for temperature in (1, 2, 4):
            for alpha in (0.5, 1, 2):
                means = [
                    statistics.mean(
                        float(pm.prune(  # type: ignore[arg-type]
                            copy.deepcopy(m), f"{CUT}\ndistill epochs=2 temperature={temperature} alpha={alpha} lr={lr}",
                            evaluate=accuracy, train=(X_train, y_train),
                        ).metric_after)
                        for m in models
                    )
                    for lr in (1e-3, 3e-3)
                ]  # fmt: skip
                print(f"{temperature:>11} {alpha:>6} {means[0]:9.1%} {means[1]:9.1%}")
    missed = []
    if statistics.mean(results["(c) distill 2 epochs"]) <= mean_a:
        missed.append("distillation did not improve on no recovery")
    footer(started, missed)


def _backend() -> str:
    import importlib.util

    return "torchao" if importlib.util.find_spec("torchao") else "torch.ao"


if __name__ == "__main__":
    main()
