"""``quantize codebook=K``: weight sharing, Han, Mao & Dally's trained quantization (2016).

Each selected tensor's nonzero weights are clustered by 1-D k-means into ``K`` shared
values (centroids initialised evenly between the smallest and largest weight, as the
paper found best); every weight becomes its centroid, so the tensor holds at most ``K``
distinct nonzero values and a compressed save (``pm.save(..., compress=True)``) stores
each as a ``ceil(log2 K)``-bit index into the codebook. Zeros stay zero.

``finetune=E`` then trains the centroids for ``E`` epochs on the training data: the
gradient of a centroid is the sum of the gradients of the weights that share it; the
codes and the zeros do not change. The undo record is a full copy of each tensor, so
undo gives back the weights bit for bit.

>>> w = torch.tensor([0.0, 0.1, 0.12, 0.0, -0.5, -0.52, 0.9])
>>> centroids, codes = kmeans(w[w != 0], 3)
>>> [round(c, 2) for c in centroids.tolist()], codes.tolist()
([-0.51, 0.11, 0.9], [1, 1, 0, 0, 2])
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .errors import PruneError
from .evaluate import _device, _to_model, check_targets, train_mode
from .recipe import Step
from .selection import FLOAT_TYPES, Target
from .snapshot import Record, TensorRecord
from .train import LR, Training, _shuffled

ITERATIONS = 30  # Lloyd iterations at most (1-D k-means settles in far fewer on weights)


@torch.no_grad()
def kmeans(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster 1-D ``values`` into ``k`` centroids (float32, sorted), linear initialisation.

    Returns the centroids and each value's code (index of its centroid).
    """
    values = values.detach().float().reshape(-1)
    centroids = torch.linspace(float(values.min()), float(values.max()), k)
    codes = torch.zeros(len(values), dtype=torch.long)
    for _ in range(ITERATIONS):
        codes = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros(k).index_add_(0, codes, values)
        counts = torch.bincount(codes, minlength=k)
        # an empty cluster keeps its centroid (it lies between its neighbours: order holds)
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return centroids, torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)


@dataclass
class Shared:
    """One tensor's weight sharing: where its nonzeros are, their codes, the centroids."""

    param: torch.Tensor
    mask: torch.Tensor  # bool, the nonzero positions when the step began
    codes: torch.Tensor  # long, one per nonzero
    centroids: torch.Tensor  # float32, K

    @torch.no_grad()
    def write(self) -> None:
        """Every shared weight set to its centroid (zeros untouched)."""
        values = _nonzero(self.centroids.detach().to(self.param.dtype))[self.codes]
        self.param.masked_scatter_(self.mask, values)


def _nonzero(centroids: torch.Tensor) -> torch.Tensor:
    """A centroid that is exactly zero would turn kept weights into pruned ones: nudge it."""
    tiny = torch.full_like(centroids, torch.finfo(centroids.dtype).tiny)
    return torch.where(centroids == 0, tiny, centroids)


def apply_codebook(
    model: nn.Module, step: Step, targets: Sequence[Target], records: list[Record], training: Training | None
) -> tuple[tuple[str, ...], int, int, str]:
    """Share the weights of ``targets`` as ``step`` says; full copies go to ``records``.

    Returns the layers, their size before and after (codes at ``ceil(log2 K)`` bits plus
    the codebook, zeros included as codes), and what fine-tuning did (or "").
    """
    k = step.count("codebook")
    bits = max(1, math.ceil(math.log2(k)))
    wrong = [t.name for t in targets if t.param.dtype not in FLOAT_TYPES]
    if wrong:
        raise PruneError(
            f"line {step.line}: quantize codebook= shares float weights and {wrong[0]} is"
            f" {_dtype_of(targets, wrong[0])}; exclude it (exclude=...)"
        )
    shared = []
    before = after = 0
    for target in targets:
        param = target.param
        records.append(TensorRecord.copy_of(target.name, param))
        before += param.numel() * param.element_size()
        after += -(-param.numel() * bits // 8) + k * param.element_size()
        mask = param.detach() != 0
        if not bool(mask.any()):
            continue
        centroids, codes = kmeans(param.detach()[mask].cpu(), k)
        item = Shared(param, mask, codes.to(param.device), centroids.to(param.device))
        item.write()
        shared.append(item)
    tuned = ""
    if "finetune" in step.options and shared:
        if training is None:
            raise PruneError(f"line {step.line}: quantize codebook= finetune= needs training data")
        tuned = finetune_centroids(model, step, shared, training)
    return tuple(t.name for t in targets), before, after, tuned


def _dtype_of(targets: Sequence[Target], name: str) -> str:
    return str(next(t.param.dtype for t in targets if t.name == name)).removeprefix("torch.")


def finetune_centroids(model: nn.Module, step: Step, shared: list[Shared], training: Training) -> str:
    """Train the centroids ``finetune=`` epochs (Adam); each one's gradient is the sum of its members'."""
    epochs = step.count("finetune")
    lr = step.number("lr", LR)
    centroids = [s.centroids.clone().requires_grad_(True) for s in shared]
    optimizer: torch.optim.Optimizer
    if step.word("optimizer", "adam") == "sgd":
        optimizer = torch.optim.SGD(centroids, lr=lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(centroids, lr=lr)
    loss_fn = training.loss or F.cross_entropy
    weights = [s.param for s in shared]
    metrics = [training.evaluate(model)] if training.evaluate is not None else []
    started = time.perf_counter()
    device = _device(model)
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(step.count("seed", 0))
        for _ in range(epochs):
            losses = []
            with train_mode(model):
                for inputs, labels in _shuffled(training.data):
                    inputs, labels = _to_model(inputs, model), labels.to(device)
                    output = model(inputs)
                    if training.loss is None:
                        check_targets(output, labels, "the default loss (cross-entropy)", strict=False)
                    loss = loss_fn(output, labels)
                    grads = torch.autograd.grad(loss, weights, allow_unused=True)
                    for item, centroid, grad in zip(shared, centroids, grads, strict=True):
                        centroid.grad = torch.zeros_like(centroid)
                        if grad is not None:
                            centroid.grad.index_add_(0, item.codes, grad[item.mask].float())
                    optimizer.step()
                    for item, centroid in zip(shared, centroids, strict=True):
                        item.centroids = centroid.detach()
                        item.write()
                    losses.append(loss.item())
            if not losses:
                raise PruneError(f"line {step.line}: the training data is empty")
            if not all(math.isfinite(x) for x in losses):
                raise PruneError(
                    f"line {step.line}: the training loss became {losses[-1]}; try a smaller lr= (now {lr:g})"
                )
            if training.evaluate is not None:
                metrics.append(training.evaluate(model))
    took = time.perf_counter() - started
    text = f"centroids fine-tuned {epochs} epoch{'s' if epochs != 1 else ''} ({took:.1f} s)"
    shown = [f"{m:.4g}" for m in metrics if isinstance(m, float)]
    if len(shown) == len(metrics) and shown:
        text += f", metric {' -> '.join(shown)}"
    return text
