"""SparseGPT on a GPT-2-shaped model of 124M parameters: time and peak memory on the CPU.

    .venv/bin/python benchmarks/sparsegpt.py [--threads 2] [--samples 128] [--seq 128] [--recipe ...]

``GPT2Config()``'s defaults (12 blocks of width 768, 124M parameters) with random weights (no
weights are downloaded), calibrated on ``--samples`` random token sequences of ``--seq`` tokens,
pruned by ``pm.prune(model, "clip amount=0.5 by=sparsegpt", data=ids)`` with its undo record (a
full copy of the 85M weights it changes). The goal: under 5 minutes on 2 CPU cores. Printed: the
whole call, the part spent in the OBS solver (``prune_weights``) and the rest (capturing the first
block's inputs, the blocks' forward passes, the Hessians), the process's peak RSS, and the load.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # (tests.zoo)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, footer, header

import prune_magic as pm
from prune_magic.engine import sparsegpt
from tests.zoo import torchvision

GOAL = 300.0  # seconds


def main() -> None:
    parser = arguments(__doc__, repeat=1)
    parser.add_argument("--samples", type=int, default=128, help="calibration sequences (default 128)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--recipe", default="clip amount=0.5 by=sparsegpt", help="the recipe to time")
    parser.set_defaults(threads=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torchvision()  # (this box's torchvision wheel needs its ops declared before transformers imports it)
    import transformers

    transformers.logging.set_verbosity_error()
    started = header(f", transformers {transformers.__version__}")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, model.config.vocab_size, (args.samples, args.seq))
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"\nGPT2Config(): {params / 1e6:.1f}M parameters; {args.samples} x {args.seq} calibration tokens")
    print(f"peak RSS with the model built: {rss_model:.0f} MiB")

    solver = [0.0]
    inner = sparsegpt.prune_weights

    def timed(*a: object, **k: object) -> torch.Tensor:
        start = time.perf_counter()
        try:
            return inner(*a, **k)  # type: ignore[arg-type]
        finally:
            solver[0] += time.perf_counter() - start

    sparsegpt.prune_weights = timed  # type: ignore[assignment]
    start = time.perf_counter()
    result = pm.prune(model, args.recipe, data=ids, report=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"\n{result.lines()[0]}")
    print(f"pm.prune: {seconds:.1f} s ({solver[0]:.1f} s in the OBS solver, {seconds - solver[0]:.1f} s forward"
          " passes, Hessians and records)")  # fmt: skip
    print(f"peak RSS: {peak:.0f} MiB ({peak - rss_model:+.0f} MiB over the model built)")
    missed = [] if seconds < GOAL else [f"SparseGPT took {seconds:.0f} s, goal < {GOAL:.0f} s"]
    footer(started, missed)


if __name__ == "__main__":
    main()
