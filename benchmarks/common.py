"""What every benchmark prints around its tables: when, where, with what, and under which load."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import prune_magic as pm


def revision() -> str:
    """The checkout's commit, and whether prune_magic/ has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "prune_magic"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" + uncommitted changes in prune_magic/" if dirty else "")


def header(versions: str = "") -> float:
    """Print date, versions, commit, threads and load; return the start time."""
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}{versions}, prune_magic {pm.__version__}"
    )
    print(f"commit: {revision()}")
    print(f"torch.get_num_threads(): {torch.get_num_threads()}")
    print(f"os.getloadavg(): {tuple(round(x, 2) for x in os.getloadavg())}  (cpus: {os.cpu_count()})")
    sys.stdout.flush()
    return time.perf_counter()


def footer(started: float, missed: list[str]) -> None:
    """Print the load at the end, the total time and every goal missed."""
    print(f"\nos.getloadavg() at the end: {tuple(round(x, 2) for x in os.getloadavg())}")
    print(f"total {time.perf_counter() - started:.0f} s")
    print("goals missed: " + ("none" if not missed else "\n  " + "\n  ".join(missed)))


def timing(spent: dict[str, float], label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, adding the seconds of each call to ``spent[label]`` (for breakdowns; no behaviour change)."""

    def inner(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - start

    return inner


def arguments(doc: str | None, repeat: int, what: str = "runs per measurement") -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes: --threads and --repeat."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeat", type=int, default=repeat, help=f"{what}; the best time is kept")
    return parser


def interleaved(models: dict[str, Callable[[Any], Any]], x: Any, runs: int) -> dict[str, float]:
    """Median seconds of ``model(x)`` for each model, the models taking turns (so load hits all alike)."""
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(runs):
        for name, model in models.items():
            start = time.perf_counter()
            model(x)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}
