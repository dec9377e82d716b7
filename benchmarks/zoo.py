"""``structured amount=0.5`` on the whole zoo, side by side with Torch-Pruning alone.

Usage::

    .venv/bin/python benchmarks/zoo.py [--only NAME,NAME] [--timeout 300] [--memory 8] [--jobs 1]
    .venv/bin/python benchmarks/zoo.py --speed [--repeat 3] [--only ...]
    .venv/bin/python benchmarks/zoo.py --pm-only --only swin_t,swin_s  # prune_magic's check alone

Every model of ``tests/zoo.py`` (80 torchvision classifiers, 3 torchvision segmentation models,
11 timm models, 5 Hugging Face transformers from small configs; random weights) is pruned twice,
each time in a child process of its own with one torch thread, a wall-clock limit and an
address-space limit:

- prune_magic: ``tests.zoo.check``, i.e. a dry run, a call whose eval function fails (the
  rollback), then ``pm.prune(model, "structured amount=0.5", example_input=x)`` (the Hugging Face
  transformers: ``"structured amount=0.5 heads=0.5"``, half their attention heads too) as a user calls
  it (timed, with its report: params and MACs), forward, output shapes, backward, ``pm.save`` /
  ``pm.load``, undo, the same recipe again, reset; every tensor compared bit for bit;
- Torch-Pruning: ``MetaPruner`` with L2 group magnitude, ratio 0.5, the final layers ignored
  (timed: graph building and ``step()``), forward, output shapes, backward.

It prints one row per model (ok / refused: a clear one-line refusal, the model unchanged /
failed, the times and their ratio) and the coverage table. Needs torchvision, timm and
transformers (the test extra installs them).

``--speed`` times instead, in one child process per model (one torch thread), the two tools
taking turns ``--repeat`` times on fresh copies of the same model: ``pm.prune`` as a user calls it
(params and MACs counted before and after), the same with ``latency=True``, and Torch-Pruning's
``MetaPruner`` + ``step()``; the best time of each. It prints each model's times, the ratios to
Torch-Pruning and the extra seconds, and how many models are within 1.5x.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
from tests import zoo
z = zoo.catalogue()[sys.argv[1]]
try:
    o = zoo.check(z) if sys.argv[2] == "pm" else zoo.torch_pruning_alone(z)
    out = {"status": o.status, "why": o.why, "seconds": o.seconds, "params": o.params, "bare": o.bare}
except BaseException as exc:
    out = {"status": "failed", "why": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print("RESULT " + json.dumps(out))
"""

SPEED = """
import copy, json, sys, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
import prune_magic as pm
from tests import zoo
z = zoo.catalogue()[sys.argv[1]]
proto, x = z.model(), z.example_input()
best = {"pm": [], "latency": [], "tp": []}
for _ in range(int(sys.argv[2])):
    for key in best:
        model = copy.deepcopy(proto)
        if key == "tp":  # (it times its own call: graph building and step)
            best[key].append(zoo.torch_pruning_alone(z, model=model).seconds)
        else:
            started = time.perf_counter()
            pm.prune(model, z.recipe, example_input=x, latency=key == "latency")
            best[key].append(time.perf_counter() - started)
        del model
print("RESULT " + json.dumps({k: min(v) for k, v in best.items()}))
"""


def run(name: str, which: str, timeout: float, memory_gib: float, repeat: int = 3) -> dict[str, object]:
    """One model, one tool (``pm``, ``tp``, or ``speed`` for both timed in turns), in a child
    process with a time and an address-space limit."""

    def limit() -> None:
        size = int(memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SPEED, name, str(repeat)] if which == "speed" else [sys.executable, "-c", CHILD, name, which],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT, preexec_fn=limit,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": "failed", "why": f"over {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        why = "out of memory" if "MemoryError" in proc.stderr or proc.returncode == -9 else tail
        return {"status": "failed", "why": why[:300], "wall": time.perf_counter() - started}
    result: dict[str, object] = json.loads(lines[-1][len("RESULT ") :])
    result["wall"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model names (default: all)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model and tool")
    parser.add_argument("--memory", type=float, default=8, help="GiB of address space per child")
    parser.add_argument("--jobs", type=int, default=1, help="models run at once")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--pm-only", action="store_true", help="run prune_magic's check alone")
    parser.add_argument("--speed", action="store_true", help="time both tools in turns instead")
    parser.add_argument("--repeat", type=int, default=3, help="turns per model with --speed (best kept)")
    args = parser.parse_args()

    from tests import zoo

    models = zoo.catalogue()
    names = [n for n in args.only.split(",") if n] or list(models)
    rows: list[dict[str, object]] = []
    if args.speed:
        speed(names, args)
        return

    def both(name: str) -> dict[str, object]:
        pm = run(name, "pm", args.timeout, args.memory)
        skipped = {"status": "skipped", "why": "not run (--pm-only)"}
        tp = skipped if args.pm_only else run(name, "tp", args.timeout, args.memory)
        return {"name": name, "family": models[name].family, "pm": pm, "tp": tp}

    print(f"{'model':<36} {'prune_magic':<9} {'s':>7} {'bare s':>7} {'TP':<7} {'s':>7} {'ratio':>6}  why")
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(both, names):
            rows.append(row)
            pm, tp = row["pm"], row["tp"]
            assert isinstance(pm, dict) and isinstance(tp, dict)
            ratio = pm["seconds"] / tp["seconds"] if pm["status"] == tp["status"] == "ok" else None
            print(
                f"{row['name']:<36} {pm['status']:<9} {pm.get('seconds', 0):>7.2f} {pm.get('bare', 0):>7.2f}"
                f" {tp['status']:<7}"
                f" {tp.get('seconds', 0):>7.2f} {f'{ratio:.2f}' if ratio else '':>6}  "
                f"{pm.get('why') or ''}{' | TP: ' + str(tp['why']) if tp.get('why') else ''}"[:400],
                flush=True,
            )
    summary(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def speed(names: list[str], args: argparse.Namespace) -> None:
    """Time ``pm.prune`` (with and without ``latency=True``) and Torch-Pruning in turns."""
    rows = []
    print(
        f"{'model':<36} {'TP s':>7} {'pm s':>7} {'ratio':>6} {'extra s':>8} {'+latency s':>10} {'ratio':>6}"
    )

    def one(name: str) -> tuple[str, dict[str, object]]:
        return name, run(name, "speed", args.timeout, args.memory, args.repeat)

    with ThreadPoolExecutor(args.jobs) as pool:
        for name, got in pool.map(one, names):
            if "tp" not in got:
                print(f"{name:<36} {got.get('status')}: {got.get('why')}"[:300], flush=True)
                continue
            tp, ours, timed = float(got["tp"]), float(got["pm"]), float(got["latency"])  # type: ignore[arg-type]
            rows.append({"name": name, "tp": tp, "pm": ours, "latency": timed})
            print(
                f"{name:<36} {tp:>7.3f} {ours:>7.3f} {ours / tp:>6.2f} {ours - tp:>8.3f} {timed:>10.3f}"
                f" {timed / tp:>6.2f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    for key, what in (("pm", "pm.prune as called (params and MACs)"), ("latency", "with latency=True")):
        ratios = [r[key] / r["tp"] for r in rows]
        if ratios:
            print(
                f"{what}: median {statistics.median(ratios):.2f}x Torch-Pruning, worst {max(ratios):.2f}x,"
                f" within 1.5x on {sum(x <= 1.5 for x in ratios)} of {len(ratios)};"
                f" worst extra {max(r[key] - r['tp'] for r in rows):.3f} s"
            )


def summary(rows: list[dict[str, object]]) -> None:
    families = sorted({str(r["family"]) for r in rows})
    print(f"\n{'family':<16} {'models':>6} {'pm ok':>6} {'pm refused':>10} {'pm failed':>9} {'TP ok':>6}")
    for family in [*families, "all"]:
        chosen = [r for r in rows if family in ("all", r["family"])]
        count = {k: sum(r["pm"]["status"] == k for r in chosen) for k in ("ok", "refused", "failed")}  # type: ignore[index]
        tp_ok = sum(r["tp"]["status"] == "ok" for r in chosen)  # type: ignore[index]
        print(
            f"{family:<16} {len(chosen):>6} {count['ok']:>6} {count['refused']:>10} {count['failed']:>9} {tp_ok:>6}"
        )
    both = [r for r in rows if r["pm"]["status"] == r["tp"]["status"] == "ok"]  # type: ignore[index]
    for key, what in (("seconds", "the call with its report (params, MACs)"), ("bare", "the step alone")):
        ratios = [r["pm"][key] / r["tp"]["seconds"] for r in both if r["pm"].get(key)]  # type: ignore[index]
        if not ratios:
            continue
        over = sum(ratio > 1.5 for ratio in ratios)
        print(
            f"time of {what}, over Torch-Pruning's, where both prune ({len(ratios)} models): median"
            f" {statistics.median(ratios):.2f}x, worst {max(ratios):.2f}x, over 1.5x on {over}"
        )
    lost = [r["name"] for r in rows if r["tp"]["status"] == "ok" and r["pm"]["status"] != "ok"]  # type: ignore[index]
    print(f"Torch-Pruning alone prunes, prune_magic does not: {', '.join(map(str, lost)) or 'none'}")
    failed = [r["name"] for r in rows if r["pm"]["status"] == "failed"]  # type: ignore[index]
    print(f"prune_magic failed (not a clear refusal): {', '.join(map(str, failed)) or 'none'}")


if __name__ == "__main__":
    main()
