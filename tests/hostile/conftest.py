"""The hostile user's kit: a snapshot of everything a user could lose, and a refusal check.

``Snapshot.of(model)`` keeps every parameter and buffer bit for bit with its identity,
``requires_grad``, dtype, device, shape and strides, every module's type, identity and
training flag, and every registered hook. ``refused(model, call, *words)`` runs ``call``,
asserts it raises a one-line error naming the problem (``words`` are in the message), and
that the snapshot is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from prune_magic.engine.errors import MESSAGE_LIMIT, PruneError


def _bits(tensor: torch.Tensor) -> Any:
    """The values as raw bytes (logical order): tensor subclasses by their inner tensors."""
    if tensor.device.type == "meta":
        return None
    if type(tensor) not in (torch.Tensor, nn.Parameter, nn.Buffer) and hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return tuple(_bits(getattr(tensor, n)) for n in names)
    t = tensor.detach().cpu()
    if t.is_quantized:
        t = t.int_repr()
    return t.contiguous().view(-1).view(torch.uint8).clone() if t.is_floating_point() else t.clone()


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(map(_equal, a, b))
    if a is None or b is None:
        return a is b
    return torch.equal(a, b)


@dataclass
class Snapshot:
    tensors: dict[str, tuple[Any, ...]]
    modules: list[tuple[str, type, int, bool]]
    hooks: list[tuple[str, tuple[int, ...]]]
    attrs: dict[str, dict[str, Any]]

    @classmethod
    def of(cls, model: nn.Module) -> Snapshot:
        tensors = {}
        for kind, named in (("param", model.named_parameters), ("buffer", model.named_buffers)):
            for name, t in named(remove_duplicate=False):
                if isinstance(t, nn.parameter.UninitializedTensorMixin):  # a lazy layer: no shape yet
                    tensors[f"{kind}:{name}"] = (id(t), type(t), None)
                    continue
                tensors[f"{kind}:{name}"] = (
                    id(t),
                    type(t),
                    t.dtype,
                    t.device,
                    tuple(t.shape),
                    t.stride(),
                    t.requires_grad,
                    _bits(t),
                )
        modules = [(n, type(m), id(m), m.training) for n, m in model.named_modules(remove_duplicate=False)]
        hooks = [
            (n, tuple(id(h) for d in _hook_dicts(m) for h in d.values()))
            for n, m in model.named_modules(remove_duplicate=False)
        ]
        attrs = {
            n: {k: v for k, v in vars(m).items() if isinstance(v, int | float | str | bool | tuple)}
            for n, m in model.named_modules(remove_duplicate=False)
        }
        return cls(tensors, modules, hooks, attrs)

    def assert_same(self, model: nn.Module) -> None:
        now = Snapshot.of(model)
        assert now.modules == self.modules, "modules (types, identities, training flags) changed"
        assert now.hooks == self.hooks, "registered hooks changed"
        assert now.attrs == self.attrs, "plain module attributes changed"
        assert now.tensors.keys() == self.tensors.keys(), "the set of parameters/buffers changed"
        for name, (*meta, bits) in self.tensors.items():
            now_meta, now_bits = now.tensors[name][:-1], now.tensors[name][-1]
            assert tuple(now_meta) == tuple(meta), (
                f"{name}: identity, type, dtype, device, shape, stride or requires_grad changed"
            )
            assert _equal(now_bits, bits), f"{name}: values changed"


def _hook_dicts(module: nn.Module) -> list[dict[int, Any]]:
    return [
        module._forward_hooks,
        module._forward_pre_hooks,
        module._backward_hooks,
        module._backward_pre_hooks,
        module._state_dict_hooks,
        module._load_state_dict_pre_hooks,
    ]


def refused(
    model: nn.Module, call: Callable[[], object], *words: str, error: type[BaseException] = PruneError
) -> str:
    """Run ``call``: it must raise ``error`` with a one-line message containing ``words``,
    of readable length, and leave ``model`` exactly as it was. Returns the message."""
    before = Snapshot.of(model)
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    assert len(message) <= MESSAGE_LIMIT + 60, len(message)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    before.assert_same(model)
    return message


@pytest.fixture
def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(32, 8)
