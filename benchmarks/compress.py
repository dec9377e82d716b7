"""Deep Compression's pipeline on LeNet-300-100, a compressed save of 25M weights, and pm.sparse.

    .venv/bin/python benchmarks/compress.py [--threads 1] [--repeat 3] [--codebook 32] [--params 25M]

1. LeNet-300-100 on Fashion-MNIST (Debian's dataset-fashion-mnist) where installed, else
   scikit-learn's digits: trained 8 epochs, pruned in 4 rounds to Han et al.'s kept fractions
   (fc1 8%, fc2 9%, fc3 26%) with 2 masked epochs each, then ``quantize codebook=K`` with one
   epoch of centroid fine-tuning. Each stage's ``pm.save(compress=True)`` size against the dense
   ``torch.save(model.state_dict())`` file, with test error.
2. ``pm.save(compress=True)`` and ``pm.load`` of a model of 6 Linear layers (about 25M weights)
   clipped to 90%, no quantization: seconds (best of --repeat) and size against dense.
3. CSR against dense per Linear shape and sparsity at batch 1 and 32 (the crossover), then
   ``pm.sparse`` on a 4096x4096 Linear at 95% zeros, and on a model of layers at 50-98% zeros:
   every layer it converts timed again, dense against CSR, interleaved.
"""

from __future__ import annotations

import gzip
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, footer, header

import prune_magic as pm
from prune_magic.engine import compress

FASHION = Path("/usr/share/datasets/fashion-mnist")
PAPER_KEPT = {"0": 0.08, "2": 0.09, "4": 0.26}


def data() -> tuple[str, tuple[torch.Tensor, ...]]:
    if (FASHION / "train-images-idx3-ubyte.gz").exists():

        def idx(name: str, offset: int) -> np.ndarray:  # type: ignore[type-arg]
            with gzip.open(FASHION / name) as f:
                return np.frombuffer(f.read(), np.uint8, offset=offset).copy()

        images = [
            torch.tensor(idx(f"{s}-images-idx3-ubyte.gz", 16).reshape(-1, 784)) / 255
            for s in ("train", "t10k")
        ]
        labels = [
            torch.tensor(idx(f"{s}-labels-idx1-ubyte.gz", 8), dtype=torch.long) for s in ("train", "t10k")
        ]
        return "Fashion-MNIST", (images[0].float(), labels[0], images[1].float(), labels[1])
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = torch.tensor(digits.data, dtype=torch.float32) / 16
    X_train, X_test, y_train, y_test = train_test_split(
        X, torch.tensor(digits.target), test_size=0.25, random_state=0
    )
    return "digits", (X_train, y_train, X_test, y_test)


def file_bytes(obj: object) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def compressed(model: nn.Module, entropy: bool = True) -> int:
    """Bytes of pm.save(compress=True); with entropy=False, as if every section were stored raw."""
    if entropy:
        return pm.save(model, io.BytesIO(), compress=True).bytes
    code = compress._entropy_code
    compress._entropy_code = lambda data: ("raw", data)  # type: ignore[assignment]
    try:
        return pm.save(model, io.BytesIO(), compress=True).bytes
    finally:
        compress._entropy_code = code  # type: ignore[assignment]


def lenet(codebook: int, missed: list[str]) -> None:
    name, (X_train, y_train, X_test, y_test) = data()
    batch = 256 if name == "Fashion-MNIST" else 64
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(X_train.shape[1], 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )

    def train(epochs: int, lr: float, masked: bool) -> None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        with pm.keep_masks(model, optimizer, undo=False) if masked else _nothing():
            for _ in range(epochs):
                for b in torch.randperm(len(X_train)).split(batch):
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(model(X_train[b]), y_train[b]).backward()
                    optimizer.step()

    @torch.no_grad()
    def accuracy(m: nn.Module) -> float:
        return (m(X_test).argmax(1) == y_test).float().mean().item()

    started = time.perf_counter()
    train(8, 1e-3, False)
    dense_file = file_bytes(model.state_dict())
    rows = [("dense float32", accuracy(model), dense_file, dense_file)]
    for r in range(1, 5):
        progress = 1 - (1 - r / 4) ** 3
        recipe = "\n".join(
            f"clip amount={(1 - k) * progress:.4f} layers={layer}" for layer, k in PAPER_KEPT.items()
        )
        pm.prune(model, recipe, undo=False, report=False)
        train(2, 1e-4 if r == 4 else 3e-4, True)
    pruned = accuracy(model)
    rows.append(("pruned (Han's kept fractions)", pruned, compressed(model, False), compressed(model)))
    pm.prune(model, f"quantize codebook={codebook}", report=False)
    rows.append(
        (f"+ codebook={codebook} (k-means)", accuracy(model), compressed(model, False), compressed(model))
    )
    pm.undo(model)
    result = pm.prune(
        model, f"quantize codebook={codebook} finetune=1 lr=0.0001", train=(X_train, y_train), report=False
    )
    rows.append(
        ("+ centroids fine-tuned 1 epoch", accuracy(model), compressed(model, False), compressed(model))
    )
    pm.prune(model, f"quantize codebook={codebook} layers=*.bias", report=False)
    final = accuracy(model)
    rows.append(
        (f"+ biases shared too (codebook={codebook})", final, compressed(model, False), compressed(model))
    )
    print(f"\n## 1. LeNet-300-100 on {name} ({time.perf_counter() - started:.0f} s)")
    kept = [(r.name, r.nonzero / r.params) for r in pm.report(model).rows if r.name.endswith("weight")]
    print("kept: " + ", ".join(f"{n} {k:.1%}" for n, k in kept) + " (paper: 8%, 9%, 26%)")
    print(f"\n{'stage':<40} {'error':>7} {'no entropy coding':>18} {'compressed':>11} {'ratio':>7}")
    for label, acc, raw, size in rows:
        print(
            f"{label:<40} {1 - acc:7.2%} {raw / 1024:13.1f} KiB {size / 1024:7.1f} KiB {dense_file / size:6.1f}x"
        )
    print(f"dense file: torch.save(model.state_dict()), {dense_file / 1024:.1f} KiB")
    print("paper (MNIST): 1070 KB -> 27 KB (40x), error 1.64% -> 1.58%")
    print(result.steps[0].quantized.line() if result.steps[0].quantized else "")
    ratio = dense_file / rows[-1][3]
    if ratio < 40 or pruned - final > 0.005:
        missed.append(
            f"LeNet-300-100: {ratio:.1f}x (goal 40x), accuracy {final:.2%} vs pruned {pruned:.2%} (goal within 0.5 pt)"
        )


def _nothing() -> object:
    import contextlib

    return contextlib.nullcontext()


def big(params: int, repeat: int, missed: list[str]) -> None:
    width = int((params / 6) ** 0.5)
    torch.manual_seed(0)

    def factory() -> nn.Module:
        return nn.Sequential(*(nn.Linear(width, width, bias=False) for _ in range(6)))

    model = factory()
    pm.prune(model, "clip amount=0.9", undo=False, report=False)
    dense_file = file_bytes(model.state_dict())
    path = Path("/tmp") / f"prune_magic_compress_bench_{id(model)}.pt"
    writes, loads, decodes = [], [], []
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            saved = pm.save(model, path, compress=True)
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            fresh = factory()
            made = time.perf_counter() - start
            start = time.perf_counter()
            loaded = pm.load(path, lambda: fresh)  # noqa: B023
            decodes.append(time.perf_counter() - start)
            loads.append(decodes[-1] + made)
        same = all(
            torch.equal(a, b)
            for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
        )
    finally:
        path.unlink(missing_ok=True)
    ratio = saved.bytes / dense_file
    n = sum(p.numel() for p in model.parameters())
    print(
        f"\n## 2. pm.save(compress=True), {n / 1e6:.1f}M weights (6 Linear {width}x{width}) at 90% zeros, no quantization"
    )
    print(
        f"dense torch.save: {dense_file / 2**20:.1f} MiB; compressed: {saved.bytes / 2**20:.1f} MiB ({ratio:.3f}x)"
    )
    print(
        f"write {min(writes):.2f} s; load {min(decodes):.2f} s (+ the factory's own init: {min(loads):.2f} s); every tensor equal: {same}"
    )
    if min(writes) > 3 or min(decodes) > 3 or ratio > 0.15 or not same:
        missed.append(
            f"25M save: write {min(writes):.2f} s, load {min(decodes):.2f} s, {ratio:.3f}x dense (goals 3 s, 3 s, 0.15x)"
        )


def best(fn: object, runs: int) -> float:
    fn()  # type: ignore[operator]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def layer(rows: int, cols: int, sparsity: float) -> nn.Linear:
    linear = nn.Linear(cols, rows)
    with torch.no_grad():
        linear.weight.mul_(torch.rand(rows, cols) >= sparsity)
    return linear


@torch.no_grad()
def sparse(repeat: int, missed: list[str]) -> None:
    torch.manual_seed(0)
    print("\n## 3. CSR against dense: speedup (dense time / CSR time), best of", 10 * repeat)
    levels = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    print(f"{'Linear (out x in)':<18} {'batch':>5} " + " ".join(f"{s:>6.0%}" for s in levels))
    for rows, cols in ((4096, 4096), (1024, 1024), (300, 784)):
        for batch in (1, 32):
            x = torch.randn(batch, cols)
            cells = []
            for s in levels:
                dense = layer(rows, cols, s)
                fast = pm.SparseLinear(dense)
                cells.append(best(lambda: dense(x), 10 * repeat) / best(lambda: fast(x), 10 * repeat))  # noqa: B023
            print(f"{f'{rows}x{cols}':<18} {batch:>5} " + " ".join(f"{c:6.2f}" for c in cells))
    model = nn.Sequential(layer(4096, 4096, 0.95))
    for batch in (1, 32):
        x = torch.randn(batch, 4096)
        fast = pm.sparse(model, batch=batch)
        speedup = best(lambda: model(x), 10 * repeat) / best(lambda: fast(x), 10 * repeat)  # noqa: B023
        close = torch.allclose(fast(x), model(x), atol=1e-5)
        print(
            f"pm.sparse, 4096x4096 at 95% zeros, batch {batch}: {speedup:.2f}x faster than dense; outputs allclose: {close}"
        )
        if batch == 1 and speedup < 3:
            missed.append(f"pm.sparse 4096x4096 at 95%, batch 1: {speedup:.2f}x (goal 3x)")
    mixed = nn.Sequential(*(layer(1024, 1024, s) for s in (0.5, 0.8, 0.9, 0.95, 0.98)))
    for batch in (1, 32):
        decisions: list[pm.engine.sparse.Layer] = []  # type: ignore[name-defined]
        fast = pm.sparse(mixed, batch=batch, decisions=decisions)
        x = torch.randn(batch, 1024)
        print(f"pm.sparse on 5 Linear 1024x1024 layers at batch {batch}:")
        for i, d in enumerate(decisions):
            if d.converted:
                again = best(lambda: mixed[i](x), 10 * repeat) / best(lambda: fast[i](x), 10 * repeat)  # noqa: B023
                verdict = f"converted, timed again: {again:.2f}x"
                if again < 1:
                    missed.append(
                        f"pm.sparse converted layer {d.name} at batch {batch} and it is {1 / again:.2f}x slower"
                    )
            else:
                verdict = "left dense"
            print(f"  {d.sparsity:4.0%} zeros: {d.why}; {verdict}")


def main() -> None:
    parser = arguments(__doc__, repeat=3)
    parser.add_argument(
        "--codebook", type=int, default=32, help="shared values per layer (default 32: 5 bits)"
    )
    parser.add_argument("--params", default="25M", help="weights of the save/load model (default 25M)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: lenet,save,sparse")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = header()
    missed: list[str] = []
    skip = set(args.skip.split(","))
    if "lenet" not in skip:
        lenet(args.codebook, missed)
    if "save" not in skip:
        big(int(float(args.params.rstrip("M")) * 1e6), args.repeat, missed)
    if "sparse" not in skip:
        sparse(args.repeat, missed)
    footer(started, missed)


if __name__ == "__main__":
    main()
