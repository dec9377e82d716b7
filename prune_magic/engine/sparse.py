"""``pm.sparse(model)``: a copy of a pruned model whose sparse Linear layers compute with CSR.

Zeros in a dense weight cost as much as any other number. ``torch.sparse`` (CSR, on the
CPU) skips them, but it pays per nonzero more than a dense kernel pays per weight: on
this project's 2-core test machine, one thread, CSR beat dense from about 90% zeros at
batch 1 (95% for a layer small enough to sit in cache) and from about 80% at batch 32
(benchmarks/README.md has the table). So each candidate layer is timed both ways on
an input of the given batch size and converted only if sparse is faster; the others
stay dense, and the result says which is which.

A :class:`SparseLinear` keeps its weight as a CSR tensor but saves and loads it dense:
its ``state_dict`` has the same keys and values as the Linear it replaced, so the
sparse model saves like any model and its weights load into the dense one.

>>> import torch
>>> from torch import nn
>>> layer = nn.Linear(64, 32)
>>> with torch.no_grad():
...     _ = layer.weight.mul_(torch.rand(32, 64) > 0.95)
>>> fast = sparse(nn.Sequential(layer), measure=False)
>>> type(fast[0]).__name__, torch.allclose(fast(torch.ones(2, 64)), layer(torch.ones(2, 64)), atol=1e-6)
('SparseLinear', True)
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import PruneError

#: Below this fraction of zeros CSR never beat dense in our measurements (batch 32: ~80%).
MIN_SPARSITY = 0.8
#: The dtypes torch's CPU CSR matmul takes.
SPARSE_TYPES = (torch.float32, torch.float64)


@contextmanager
def _beta() -> Iterator[None]:
    """torch warns that sparse CSR support is in beta, on every conversion."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        yield


class SparseLinear(nn.Module):
    """A Linear layer computing ``x @ W.T + b`` with ``W`` in CSR form (inference, CPU)."""

    weight: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with _beta(), torch.no_grad():
            self.register_buffer("weight", linear.weight.detach().to_sparse_csr())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        with _beta():
            if self.bias is None:
                out = torch.mm(self.weight, flat.T)
            else:
                out = torch.addmm(self.bias[:, None], self.weight, flat.T)
        return out.T.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nonzero = self.weight._nnz()
        total = self.in_features * self.out_features
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None},"
            f" CSR {1 - nonzero / max(1, total):.1%} zeros"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> SparseLinear:
        # (copy.deepcopy can't reach a CSR tensor's storage: rebuild from the dense weights)
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None, dtype=self.weight.dtype)
        dense.load_state_dict(self.state_dict())
        copied = SparseLinear(dense).train(self.training)
        memo[id(self)] = copied
        return copied

    # the state dict holds the weight dense: the same keys and values as the Linear it replaced
    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight.to_dense()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for key in ("weight", "bias") if self.bias is not None else ("weight",):
            value = state_dict.get(prefix + key)
            if value is None:
                missing_keys.append(prefix + key)
                continue
            expected = (self.out_features, self.in_features) if key == "weight" else (self.out_features,)
            if tuple(value.shape) != expected:
                error_msgs.append(
                    f"size mismatch for {prefix + key}: copying a param with shape {tuple(value.shape)},"
                    f" the shape in current model is {expected}."
                )
                continue
            with torch.no_grad(), _beta():
                if key == "weight":
                    self.weight = value.to(self.weight.dtype).to_sparse_csr()  # (a buffer: assigned)
                else:
                    assert self.bias is not None
                    self.bias.copy_(value)


@dataclass(frozen=True)
class Layer:
    """What :func:`sparse` decided for one Linear layer, and why."""

    name: str
    sparsity: float
    dense_seconds: float | None  # per forward at the measured batch (None: not timed)
    sparse_seconds: float | None
    converted: bool
    why: str


def sparse(
    model: nn.Module,
    min_sparsity: float = MIN_SPARSITY,
    batch: int = 1,
    measure: bool = True,
    decisions: list[Layer] | None = None,
) -> nn.Module:
    """A copy of ``model`` in which each Linear with at least ``min_sparsity`` zeros computes
    with a CSR weight, where that is faster: ``model`` itself is not changed.

    Args:
        min_sparsity: layers with fewer zeros stay dense without being timed.
        batch: the batch size the model will run at; each candidate is timed dense and
            sparse on a random input of this many rows (one thread's worth of work, a few
            milliseconds a layer) and converted only if sparse is faster.
        measure: False converts every candidate without timing (for tests and
            machines where timing is meaningless).
        decisions: a list that receives one :class:`Layer` per Linear layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
    if not 0 <= min_sparsity <= 1:
        raise PruneError(f"min_sparsity={min_sparsity} must be between 0 and 1 (the fraction of zeros)")
    if batch < 1:
        raise PruneError(f"batch={batch} must be at least 1")
    try:
        copied = copy.deepcopy(model)
    except Exception as exc:
        raise PruneError(f"pm.sparse works on a copy of the model, and copy.deepcopy failed: {exc}") from exc
    found = decisions if decisions is not None else []
    for name, module in list(copied.named_modules()):
        if type(module) is not nn.Linear:
            continue
        layer = _decide(name, module, min_sparsity, batch, measure, _timer)
        found.append(layer)
        if layer.converted:
            parent, _, child = name.rpartition(".")
            setattr(copied.get_submodule(parent), child, SparseLinear(module))
    return copied


def _decide(
    name: str,
    module: nn.Linear,
    min_sparsity: float,
    batch: int,
    measure: bool,
    timer: Callable[[Callable[[], object]], float],
) -> Layer:
    weight = module.weight.detach()
    sparsity = 1 - int(torch.count_nonzero(weight)) / max(1, weight.numel())
    if weight.device.type != "cpu" or weight.dtype not in SPARSE_TYPES:
        return Layer(
            name, sparsity, None, None, False, f"{weight.dtype} on {weight.device.type}: stays dense"
        )
    if sparsity < min_sparsity:
        return Layer(
            name, sparsity, None, None, False, f"{sparsity:.1%} zeros < min_sparsity={min_sparsity:g}"
        )
    if not measure:
        return Layer(name, sparsity, None, None, True, "not timed (measure=False)")
    candidate = SparseLinear(module)
    x = torch.randn(batch, module.in_features, dtype=weight.dtype)
    with torch.no_grad():
        dense = timer(lambda: module(x))
        fast = timer(lambda: candidate(x))
    if fast < dense * 0.95:  # (a clear margin: a layer converted must never be slower)
        return Layer(name, sparsity, dense, fast, True, f"CSR {dense / fast:.2f}x faster at batch {batch}")
    if fast < dense:
        why = f"CSR only {dense / fast:.2f}x faster at batch {batch} (converted from 1.05x: timing noise)"
    else:
        why = f"dense faster at batch {batch} (CSR takes {fast / dense:.2f}x its time)"
    return Layer(name, sparsity, dense, fast, False, why)


def _timer(fn: Callable[[], object], budget: float = 0.02) -> float:
    """The best of several timed calls (the best: noise on a shared machine only adds time)."""
    fn()
    best = float("inf")
    started = time.perf_counter()
    runs = 0
    while runs < 5 or (time.perf_counter() - started < budget and runs < 200):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        runs += 1
    return best
