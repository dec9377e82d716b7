"""Benchmark ``clip`` (magnitude pruning) against ``torch.nn.utils.prune``, in one run.

Usage::

    .venv/bin/python benchmarks/clip.py [--sizes 1M,12.6M,100M] [--threads 1] [--repeat 3]

For each model size (Linear layers plus a few Conv2d, built here, no downloads) it prints
one table with, per method: the best wall time of ``--repeat`` runs, that time as a
multiple of the *floor* (one read of every selected weight), the speedup of prune_magic
over torch, the peak extra resident memory during the call and the memory kept after it,
both in bytes per selected weight, and the goals with "met" / "MISSED".

Peak extra memory is the resident-set high-water mark during the call minus the resident
set just before it (Linux: ``/proc/self/clear_refs`` resets ``VmHWM``). Before each call
the garbage collector runs and ``malloc_trim`` hands freed heap pages back, so memory that
an earlier call freed is not silently reused and missed.

Torch threads are set from ``--threads`` here (the library never sets them).

The *cold* row times what a user waits for on the first clip of a session: a new Python
process loads the model (untimed; torch is imported by then), then ``import prune_magic``
and the first ``pm.prune`` call are timed together. Its goal compares it with torch's
*warm* ``global_unstructured`` call in this process.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import itertools
import re
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch
import torch.nn.utils.prune as tprune
from common import arguments, footer, header, interleaved
from torch import nn

import prune_magic as pm
from prune_magic.engine.magnitude import select_cut, shrink_value

GLOBAL = "clip amount=0.9 scope=global"
LAYER = "clip amount=0.5"
GLOBAL_AMOUNT, LAYER_AMOUNT = 0.9, 0.5

# goals
GLOBAL_VS_TORCH, GLOBAL_VS_FLOOR, PEAK_BEYOND_UNDO, COLD_VS_TORCH = 20.0, 30.0, 1.0, 10.0
ZEROING_VS_FLOOR, LAYER_VS_TORCH, FORWARD_VS_DENSE = 2.0, 4.0, 1.05


# ---------------------------------------------------------------------------- memory


def _status(key: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    if match is None:
        raise RuntimeError(f"{key} not found in /proc/self/status")
    return int(match.group(1)) * 1024


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def settle() -> int:
    """Collect garbage, give freed heap pages back to the OS; return the RSS (bytes)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    return _status("VmRSS")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def check_peak_reset() -> None:
    """Make sure clearing VmHWM works here (it needs Linux and a writable clear_refs)."""
    settle()
    block = torch.ones(64 << 20, dtype=torch.uint8)  # touch 64 MiB
    del block
    settle()
    reset_peak()
    if _status("VmHWM") - _status("VmRSS") > 16 << 20:
        sys.exit("writing 5 to /proc/self/clear_refs does not reset VmHWM here; cannot measure peaks")


@dataclass
class Run:
    seconds: float
    peak: int  # bytes above the RSS just before the call
    kept: int  # bytes of RSS still held after the call (settled)


def measure(fn: Callable[[], object]) -> Run:
    """Time ``fn()`` and record its peak and retained resident memory."""
    before = settle()
    reset_peak()
    before = max(before, _status("VmRSS"))
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - before
    kept = settle() - before
    return Run(seconds, peak, kept)


# ---------------------------------------------------------------------------- models


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMG]?)\s*", text, re.I)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use e.g. 1M, 25M, 100M")
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def net(channels: int, width: int, depth: int = 6) -> nn.Sequential:
    """Three Conv2d layers on a 3x32x32 image, then an MLP of ``depth`` Linear layers.

    Plain torch modules only, so a new process can load the pickled model without this script
    (the cold measurement)."""
    c = channels
    features = nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
    )
    sizes = [16 * c] + [width] * (depth - 1) + [10]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(OrderedDict(features=features, classifier=nn.Sequential(*layers)))


def shape_for(params: int) -> tuple[int, int]:
    """(channels, width) giving about ``params`` weights."""
    channels = 16 if params < 5_000_000 else 32 if params < 50_000_000 else 64
    conv = 27 * channels + 90 * channels**2
    # 4 square hidden layers + Linear(16c, w) + Linear(w, 10)
    a, b, c = 4.0, 16 * channels + 10, conv - params
    width = (-b + max(0.0, b * b - 4 * a * c) ** 0.5) / (2 * a)  # below the convs' share: the narrowest
    return channels, max(8, round(width / 8) * 8)


def build(params: int, seed: int = 0) -> nn.Sequential:
    """The model; each layer is initialised in place by its constructor (no temporaries)."""
    torch.manual_seed(seed)
    return net(*shape_for(params))


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (module, "weight") pairs prune_magic selects by default: Linear and Conv."""
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [getattr(m, name) for m, name in prunable(model)]


class Original:
    """A CPU copy of the model's parameters, to put back between methods."""

    def __init__(self, model: nn.Module) -> None:
        self.state = {n: p.detach().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        for name, value in self.state.items():
            model.get_parameter(name).copy_(value)
        pm.forget(model)


def zeros(model: nn.Module) -> int:
    return sum(int(w.numel() - torch.count_nonzero(w)) for w in weights(model))


# ---------------------------------------------------------------------------- methods


@torch.no_grad()
def floor(ws: list[torch.Tensor]) -> float:
    return float(sum(p.sum() for p in ws))


def torch_global(model: nn.Module) -> None:
    tprune.global_unstructured(prunable(model), pruning_method=tprune.L1Unstructured, amount=GLOBAL_AMOUNT)


def torch_layer(model: nn.Module) -> None:
    for module, name in prunable(model):
        tprune.l1_unstructured(module, name, amount=LAYER_AMOUNT)


def torch_remove(model: nn.Module) -> None:
    for module, name in prunable(model):
        tprune.remove(module, name)


@torch.no_grad()
def zeroing(ws: list[torch.Tensor], lambd: float) -> None:
    for w in ws:
        flat = w.detach().view(-1)
        torch.hardshrink(flat, lambd, out=flat)


@torch.no_grad()
def forward_times(models: dict[str, nn.Module], batch: int, budget: float) -> dict[str, float]:
    """Median forward time per model, runs interleaved so load changes hit all alike."""
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    one = 0.0
    for m in models.values():  # warm up
        start = time.perf_counter()
        m(x)
        one = max(one, time.perf_counter() - start)
    runs = int(min(201, max(7, budget / (len(models) * max(one, 1e-6)))))
    return interleaved(models, x, runs)


#: Run by :func:`cold` in a new process: argv = model file, threads, recipe.
COLD = """
import sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
model = torch.load(sys.argv[1], weights_only=False)
assert "prune_magic" not in sys.modules
start = time.perf_counter()
import prune_magic as pm
pm.prune(model, sys.argv[3], report=False)
print(time.perf_counter() - start)
"""


def cold(model: nn.Module, repeat: int, threads: int) -> float:
    """Best of ``repeat`` new processes: ``import prune_magic`` and the first global clip of
    ``model`` (with its undo record), timed together; loading the model is not timed."""
    root = Path(__file__).resolve().parents[1]
    times = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        torch.save(model, path)
        for _ in range(repeat):
            command = [sys.executable, "-c", COLD, str(path), str(threads), GLOBAL]
            done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True)
            times.append(float(done.stdout.split()[-1]))
    return min(times)


# ---------------------------------------------------------------------------- report


@dataclass
class Row:
    method: str
    seconds: float | None = None
    floor: float | None = None  # x floor
    speedup: float | None = None
    peak: float | None = None  # B/w
    kept: float | None = None  # B/w
    goals: list[str] = field(default_factory=list)
    note: str = ""


def goal(text: str, ok: bool) -> str:
    return f"{text} {'met' if ok else 'MISSED'}"


def fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    text = format(value, spec)
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.000"


def print_table(title: str, rows: list[Row]) -> None:
    head = [
        "method",
        "time (s)",
        "x floor",
        "speedup vs torch",
        "peak extra B/w",
        "retained/undo B/w",
        "goals",
    ]
    cells = [
        [
            r.method,
            fmt(r.seconds, ".4g"),
            fmt(r.floor, ".1f"),
            fmt(r.speedup, ".1f"),
            fmt(r.peak, ".3f"),
            fmt(r.kept, ".3f"),
            "; ".join([*r.goals, r.note] if r.note else r.goals),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]

    def line(values: list[str]) -> str:
        out = [values[0].ljust(widths[0])]
        out += [v.rjust(w) for v, w in zip(values[1:-1], widths[1:-1])]
        return "| " + " | ".join([*out, values[-1].ljust(widths[-1])]) + " |"

    print(f"\n{title}")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print(line(c))
    sys.stdout.flush()


# ---------------------------------------------------------------------------- one size


def best(runs: list[Run]) -> Run:
    """Best time; the largest peak and retained memory seen (the conservative side)."""
    return Run(min(r.seconds for r in runs), max(r.peak for r in runs), max(r.kept for r in runs))


def bench_size(params: int, repeat: int, slow: float, forward_budget: float, threads: int) -> list[str]:
    model = build(params)
    model.eval()
    ws = weights(model)
    n = sum(w.numel() for w in ws)
    original = Original(model)
    first = cold(model, repeat, threads)  # before this process touches the weights
    channels, width = shape_for(params)
    title = (
        f"size {params / 1e6:g}M: {n:,} selected weights (fp32) in {len(ws)} layers "
        f"(3 Conv2d with {channels}-{4 * channels} channels, Linear width {width})"
    )
    per_w = 1.0 / n
    rows: list[Row] = []
    missed: list[str] = []

    def torch_repeats(first: float) -> int:
        return 1 if first > slow else repeat

    # floor: one read of every selected weight
    fl = best([measure(lambda: floor(ws)) for _ in range(repeat)])
    rows.append(Row("floor: sum(p.sum() for p in weights)", fl.seconds, 1.0, peak=fl.peak * per_w))

    changed = [0]  # values the last undo record holds

    def pm_runs(recipe: str, undo: bool) -> tuple[Run, int]:
        runs, undo_bytes = [], 0
        for _ in range(repeat):
            original.restore(model)
            runs.append(measure(lambda: pm.prune(model, recipe, report=False, undo=undo)))
            if undo:
                entry = pm.history(model).entries[-1]
                undo_bytes = entry.undo_bytes
                changed[0] = sum(r.changed for r in entry.records)
        pm.forget(model)  # don't hold the last record through later measurements
        return best(runs), undo_bytes

    # ---- global clip amount=0.9
    k = round(GLOBAL_AMOUNT * n)
    cut = select_cut(ws, k)
    key, below, equal = cut.key, cut.below, cut.equal
    lambd = shrink_value(key + 1 if k - below == equal else key, ws[0].dtype)
    assert lambd is not None

    g_undo, g_undo_bytes = pm_runs(GLOBAL, undo=True)
    z_undo = zeros(model)
    g_fast, _ = pm_runs(GLOBAL, undo=False)
    z_fast = zeros(model)

    # parts of pm.prune, each on the weights it sees there: the select on the dense weights
    original.restore(model)
    sel = best([measure(lambda: select_cut(ws, k)) for _ in range(repeat)])
    zr_runs = []
    for _ in range(repeat):
        original.restore(model)
        zr_runs.append(measure(lambda: zeroing(ws, lambd)))
    zr = best(zr_runs)
    z_zeroing = zeros(model)

    # torch: global_unstructured, then remove; the hooked model in between serves the forward test
    dense = copy.deepcopy(model)
    original.restore(model)
    clipped = copy.deepcopy(model)
    pm.prune(clipped, GLOBAL, report=False, undo=False)
    fwd: dict[int, dict[str, float]] = {}
    tg_runs: list[Run] = []
    z_torch = 0
    while len(tg_runs) < (torch_repeats(tg_runs[0].seconds) if tg_runs else 1):
        original.restore(model)
        hook = measure(lambda: torch_global(model))
        if not fwd:
            for batch in (1, 32):
                fwd[batch] = forward_times(
                    {"dense": dense, "clipped": clipped, "hooked": model}, batch, forward_budget
                )
        rm = measure(lambda: torch_remove(model))
        z_torch = zeros(model)
        # the peak of the whole call: remove's peak counts from RSS before it, which is
        # what global_unstructured kept, relative to the RSS before the call
        tg_runs.append(
            Run(hook.seconds + rm.seconds, max(hook.peak, hook.kept + rm.peak), hook.kept + rm.kept)
        )
    tg = best(tg_runs)
    del dense, clipped
    if not below <= z_zeroing <= below + equal:
        missed.append(f"zeroing pass: {z_zeroing:,} zeros, expected {below:,}..{below + equal:,}")
    if not z_undo == z_fast == z_torch == k:
        missed.append(
            f"global: zeros differ: pm undo {z_undo:,}, pm undo=False {z_fast:,}, torch {z_torch:,}, k {k:,}"
        )

    target_undo = GLOBAL_AMOUNT * 4 + 0.125
    for label, run, undo_bytes in (
        ("global 0.9: prune_magic (undo record)", g_undo, g_undo_bytes),
        ("global 0.9: prune_magic undo=False", g_fast, 0),
    ):
        speed, ratio = tg.seconds / run.seconds, run.seconds / fl.seconds
        beyond = (run.peak - undo_bytes) * per_w
        goals = [
            goal(f">={GLOBAL_VS_TORCH:g}x torch", speed >= GLOBAL_VS_TORCH),
            goal(f"<={GLOBAL_VS_FLOOR:g}x floor", ratio <= GLOBAL_VS_FLOOR),
            goal(f"peak beyond undo {beyond:.3f} <={PEAK_BEYOND_UNDO:g} B/w", beyond <= PEAK_BEYOND_UNDO),
        ]
        if undo_bytes:
            # the goal: the changed values plus one bit per weight
            excess = undo_bytes - (changed[0] * ws[0].element_size() + n / 8)
            text = f"undo {undo_bytes * per_w:.4f} <={target_undo:.3f} B/w"
            if excess > 0:
                text += f" (+{excess / 1024:.0f} KiB over changed values + 1 bit/w)"
            goals.append(goal(text, undo_bytes * per_w <= target_undo))
        kept = undo_bytes * per_w if undo_bytes else run.kept * per_w
        rows.append(Row(label, run.seconds, ratio, speed, run.peak * per_w, kept, goals))
        missed += [f"{label}: {g}" for g in goals if g.endswith("MISSED")]
    rows.append(
        Row("  part: exact select (select_cut)", sel.seconds, sel.seconds / fl.seconds, peak=sel.peak * per_w)
    )
    ok = zr.seconds / fl.seconds <= ZEROING_VS_FLOOR
    rows.append(
        Row(
            "global 0.9: zeroing pass alone (hardshrink)",
            zr.seconds,
            zr.seconds / fl.seconds,
            tg.seconds / zr.seconds,
            zr.peak * per_w,
            zr.kept * per_w,
            [goal(f"<={ZEROING_VS_FLOOR:g}x floor", ok)],
        )
    )
    if not ok:
        missed.append(f"zeroing pass: <={ZEROING_VS_FLOOR:g}x floor MISSED")
    note = f"{len(tg_runs)} run" + ("s" if len(tg_runs) > 1 else "")
    rows.append(
        Row(
            "global 0.9: torch global_unstructured+remove",
            tg.seconds,
            tg.seconds / fl.seconds,
            1.0,
            tg.peak * per_w,
            tg.kept * per_w,
            note=note,
        )
    )
    speed = tg.seconds / first
    goals = [goal(f">={COLD_VS_TORCH:g}x torch's warm call", speed >= COLD_VS_TORCH)]
    rows.append(
        Row("global 0.9: prune_magic cold (new process)", first, first / fl.seconds, speed, goals=goals)
    )
    missed += [f"global 0.9 cold: {g}" for g in goals if g.endswith("MISSED")]

    # ---- layer-wise clip amount=0.5
    l_undo, l_undo_bytes = pm_runs(LAYER, undo=True)
    z_lundo = zeros(model)
    l_fast, _ = pm_runs(LAYER, undo=False)
    z_lfast = zeros(model)
    tl_runs: list[Run] = []
    hooked_kept = 0
    z_tlayer = 0
    while len(tl_runs) < (torch_repeats(tl_runs[0].seconds) if tl_runs else 1):
        original.restore(model)
        hook = measure(lambda: torch_layer(model))
        rm = measure(lambda: torch_remove(model))
        z_tlayer = zeros(model)
        hooked_kept = max(hooked_kept, hook.kept)
        tl_runs.append(
            Run(hook.seconds + rm.seconds, max(hook.peak, hook.kept + rm.peak), hook.kept + rm.kept)
        )
    tl = best(tl_runs)
    k_layer = sum(round(LAYER_AMOUNT * w.numel()) for w in ws)
    if not z_lundo == z_lfast == z_tlayer == k_layer:
        missed.append(f"layer: zeros differ: pm undo {z_lundo:,}, undo=False {z_lfast:,}, torch {z_tlayer:,}")
    for label, run, kept in (
        ("layer 0.5: prune_magic (undo record)", l_undo, l_undo_bytes * per_w),
        ("layer 0.5: prune_magic undo=False", l_fast, l_fast.kept * per_w),
    ):
        speed = tl.seconds / run.seconds
        goals = [goal(f">={LAYER_VS_TORCH:g}x torch", speed >= LAYER_VS_TORCH)]
        rows.append(Row(label, run.seconds, run.seconds / fl.seconds, speed, run.peak * per_w, kept, goals))
        missed += [f"{label}: {g}" for g in goals if g.endswith("MISSED")]
    note = f"retained = hooked state before remove; {len(tl_runs)} run" + ("s" if len(tl_runs) > 1 else "")
    rows.append(
        Row(
            "layer 0.5: torch l1_unstructured+remove",
            tl.seconds,
            tl.seconds / fl.seconds,
            1.0,
            tl.peak * per_w,
            hooked_kept * per_w,
            note=note,
        )
    )

    # ---- forward
    for batch, t in fwd.items():
        ratio = t["clipped"] / t["dense"]
        rows.append(Row(f"forward b={batch}: dense (unpruned)", t["dense"]))
        ok = ratio <= FORWARD_VS_DENSE
        rows.append(
            Row(
                f"forward b={batch}: after pm global clip",
                t["clipped"],
                speedup=t["hooked"] / t["clipped"],
                goals=[goal(f"{ratio:.3f}x dense <={FORWARD_VS_DENSE:g}", ok)],
            )
        )
        rows.append(
            Row(
                f"forward b={batch}: torch hooked (before remove)",
                t["hooked"],
                speedup=1.0,
                note=f"{t['hooked'] / t['dense']:.3f}x dense",
            )
        )
        if not ok:
            missed.append(f"forward b={batch}: {ratio:.3f}x dense MISSED")

    print_table(title, rows)
    return [f"{params / 1e6:g}M {m}" for m in missed]


def warm_up() -> None:
    """Run every method once on a small model: lazy imports and first-call costs go here."""
    model = build(1 << 19)
    original = Original(model)
    for recipe in (GLOBAL, LAYER):
        for undo in (True, False):
            original.restore(model)
            pm.prune(model, recipe, report=False, undo=undo)
    for method in (torch_global, torch_layer):
        original.restore(model)
        method(model)
        torch_remove(model)
    pm.forget(model)


def main() -> None:
    parser = arguments(__doc__, repeat=3)
    parser.add_argument("--sizes", default="1M,12.6M,100M", help="comma-separated sizes (K/M/G suffixes)")
    parser.add_argument(
        "--slow",
        type=float,
        default=20.0,
        help="a torch method whose first run takes longer than this (s) is run once only",
    )
    parser.add_argument("--forward-budget", type=float, default=2.0, help="seconds per forward comparison")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]

    torch.set_num_threads(args.threads)
    check_peak_reset()
    started = header()
    print(
        f"repeat {args.repeat} (best time; largest peak); torch methods once if the first run > {args.slow:g} s"
    )
    print("B/w = bytes per selected weight; peak extra = VmHWM during the call - VmRSS before it")
    started_warm = time.perf_counter()
    warm_up()
    print(
        f"warm-up on a small model (first calls, lazy imports): {time.perf_counter() - started_warm:.2f} s, untimed"
    )
    sys.stdout.flush()
    missed: list[str] = []
    for size in sizes:
        missed += bench_size(size, args.repeat, args.slow, args.forward_budget, args.threads)
    footer(started, missed)


if __name__ == "__main__":
    main()
