"""``clip amount=A by=sparsegpt``: one-shot pruning with the OBS weight update (Frantar &
Alistarh 2023).

Each Linear layer is pruned column block by column block (``blocksize``, default 128): in
each block the weights of lowest w² / [H⁻¹]ᵢᵢ go (with ``nm=N:M``, the N lowest of every M
inputs), and the error each removal makes is spread over the inputs not yet visited, through
the inverse Hessian of the layer's inputs, H = XᵀX + λ·mean(diag)·I (``dampening`` λ,
default 0.01). So the kept weights change too, and the step's undo record holds whole
weights.

Calibration follows the reference: for a language model with one list of blocks (GPT-2's
``transformer.h``, Llama's ``model.layers``), the inputs of the first block are captured
once, and block by block the layers' Hessians are taken from the outputs of the blocks
before it, already pruned; then the block's outputs, pruned, feed the next. Any other model
(T5's two stacks, a CNN) gets every layer's Hessian from one pass of the unpruned model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import torch
from torch import nn

from .errors import PruneError
from .evaluate import eval_mode
from .language import block_prefixes, inputs, rows, run
from .nm import check_groups
from .recipe import Step
from .selection import Target
from .snapshot import TensorRecord
from .wanda import linear_layers

SAMPLES = 128  # calibration samples (rows of the data) read from data=, as the reference's nsamples
Call = tuple[tuple[Any, ...], dict[str, Any]]


class _Captured(Exception):
    """Raised in the first block's pre-hook: the rest of the model need not run."""


@torch.no_grad()
def apply_sparsegpt(
    model: nn.Module, step: Step, targets: Sequence[Target], records: list[TensorRecord] | None, data: object
) -> int:
    """Prune ``targets`` as ``step`` says; returns the zeros among them afterwards."""
    layers = linear_layers(model, step, targets)
    if data is None:
        raise PruneError(
            f"line {step.line}: by=sparsegpt needs calibration data: pass data= (--data in %%prune)"
        )
    ratio = check_groups(step, model, targets) if "nm" in step.options else None
    amount = step.number("amount") if ratio is None else ratio[0] / ratio[1]
    blocksize, dampening = step.count("blocksize", 128), step.number("dampening", 0.01)
    if ratio is not None and blocksize % ratio[1]:
        raise PruneError(
            f"line {step.line}: blocksize={blocksize} must be a multiple of M in nm={step.options['nm']}"
        )
    batches = _calibration(data)

    def prune_layers(chosen: Sequence[Target], hessians: dict[str, torch.Tensor]) -> None:
        for target in chosen:
            module = model.get_submodule(layers[target.name])
            if records is not None:
                records.append(TensorRecord.copy_of(target.name, target.param))
            weight = rows(module, target.param)
            try:
                pruned = prune_weights(
                    weight, hessians[layers[target.name]], amount, ratio, blocksize, dampening
                )
            except torch.linalg.LinAlgError:  # type: ignore[attr-defined]
                raise PruneError(
                    f"line {step.line}: by=sparsegpt: the Hessian of {layers[target.name]}'s inputs is not"
                    " positive definite; raise dampening= (e.g. dampening=0.1) or give more data="
                ) from None
            weight.copy_(pruned.to(weight.dtype))

    with eval_mode(model):
        blocks = block_prefixes(model)
        if len(blocks) == 1 and all(t.name.startswith(f"{blocks[0]}.") for t in targets):
            _block_by_block(
                model,
                cast(nn.ModuleList, model.get_submodule(blocks[0])),
                blocks[0],
                targets,
                layers,
                batches,
                prune_layers,
            )
        else:
            names = list(dict.fromkeys(layers.values()))
            prune_layers(targets, _hessians(model, names, lambda: [run(model, x) for x in batches]))
    return sum(int((t.param == 0).sum()) for t in targets)


def _calibration(data: object) -> list[torch.Tensor]:
    out, seen = [], 0
    for x in inputs(data, 32):
        if seen >= SAMPLES:
            break
        out.append(x[: SAMPLES - seen])
        seen += len(out[-1])
    if not seen:
        raise PruneError("by=sparsegpt: the data= is empty")
    return out


def _hessians(
    model: nn.Module, names: Sequence[str], forward: Callable[[], object]
) -> dict[str, torch.Tensor]:
    """XᵀX / tokens of each named layer's inputs over the passes ``forward`` makes."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def collect(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]

        return collect

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in names]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if name not in sums]
    if missing:
        raise PruneError(
            f"by=sparsegpt saw no input reach {', '.join(missing[:3])}: the data= batches must run through the model"
        )
    return {name: sums[name] / counts[name] for name in names}


def _block_by_block(
    model: nn.Module,
    blocks: nn.ModuleList,
    prefix: str,
    targets: Sequence[Target],
    layers: dict[str, str],
    batches: list[torch.Tensor],
    prune_layers: Callable[[Sequence[Target], dict[str, torch.Tensor]], None],
) -> None:
    calls = _capture(model, blocks[0], batches)
    last = max(int(t.name[len(prefix) + 1 :].split(".")[0]) for t in targets)
    for i, block in enumerate(blocks):
        if i > last:
            break
        mine = [t for t in targets if t.name.startswith(f"{prefix}.{i}.")]
        if mine:
            names = list(dict.fromkeys(layers[t.name] for t in mine))
            prune_layers(mine, _hessians(model, names, partial(_run_block, block, calls)))
        if i < last:
            calls = [_with_hidden(a, k, _hidden(block(*a, **k))) for a, k in calls]


def _run_block(block: nn.Module, calls: list[Call]) -> list[object]:
    return [block(*args, **kwargs) for args, kwargs in calls]


def _capture(model: nn.Module, first: nn.Module, batches: list[torch.Tensor]) -> list[Call]:
    """The arguments the first block is called with, one call per calibration batch."""
    calls: list[Call] = []

    def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((args, dict(kwargs)))
        raise _Captured

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for x in batches:
            with contextlib.suppress(_Captured):
                run(model, x)
    finally:
        handle.remove()
    return calls


def _hidden(output: object) -> torch.Tensor:
    out = output[0] if isinstance(output, tuple | list) else output
    if not isinstance(out, torch.Tensor):
        raise PruneError(f"by=sparsegpt: a block returned {type(output).__name__}, not hidden states")
    return out


def _with_hidden(args: tuple[Any, ...], kwargs: dict[str, Any], hidden: torch.Tensor) -> Call:
    if args:
        return (hidden, *args[1:]), kwargs
    return (), {**kwargs, "hidden_states": hidden}


def prune_weights(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    amount: float,
    ratio: tuple[int, int] | None = None,
    blocksize: int = 128,
    dampening: float = 0.01,
) -> torch.Tensor:
    """SparseGPT on one (out, in) weight with its inputs' Hessian: the pruned, updated weight (float32).

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> x = torch.randn(256, 8)
    >>> w = prune_weights(torch.randn(4, 8), x.T @ x, 0.5)
    >>> int((w == 0).sum())
    16
    """
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone().to(W.device)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    cols = W.shape[1]
    H += dampening * torch.mean(torch.diag(H)) * torch.eye(cols, device=W.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    # rows are independent in the column loop: a few hundred at a time keep each of its thousands of
    # small operations under torch's grain for threading, so none waits for a second thread
    rows = max(1, GRAIN // blocksize)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag = torch.diag(Hinv1)
        W1 = W[:, i1:i2].clone()
        if ratio is None:
            score = (W1**2 / diag[None, :] ** 2).flatten()
            mask1 = torch.zeros(score.numel(), dtype=torch.bool, device=W.device)
            mask1[score.argsort(stable=True)[: round(score.numel() * amount)]] = True
            mask1 = mask1.view(W1.shape)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        Err1 = torch.zeros_like(W1)
        for r1 in range(0, W.shape[0], rows):
            _columns(W1[r1 : r1 + rows], mask1[r1 : r1 + rows], Err1[r1 : r1 + rows], Hinv1, diag, ratio)
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W


GRAIN = 32768  # (at::internal::GRAIN_SIZE: smaller elementwise operations run on one thread)


def _columns(
    W1: torch.Tensor,
    mask1: torch.Tensor,
    Err1: torch.Tensor,
    Hinv1: torch.Tensor,
    diag: torch.Tensor,
    ratio: tuple[int, int] | None,
) -> None:
    """One block of columns of some rows, in place: prune column by column, spreading each column's
    error over the columns after it (W1, mask1 and Err1 are views of those rows)."""
    for i in range(W1.shape[1]):
        if ratio is not None and i % ratio[1] == 0:
            score = W1[:, i : i + ratio[1]] ** 2 / diag[i : i + ratio[1]][None, :] ** 2
            mask1[:, i : i + ratio[1]].scatter_(1, score.argsort(dim=1, stable=True)[:, : ratio[0]], True)
        w = W1[:, i]
        err = torch.where(mask1[:, i], w, 0.0).div_(Hinv1[i, i])
        W1[:, i:].sub_(err[:, None] * Hinv1[i, i:][None, :])
        w.masked_fill_(mask1[:, i], 0)  # (exact zeros: w - err * d may round to a tiny value)
        Err1[:, i] = err
