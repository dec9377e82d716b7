"""Shared fixtures: small seeded models, and one torch thread (this box has 2 noisy cores)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.engine.architectures import MLP

torch.set_num_threads(1)
__all__ = ["MLP", "same_bits", "state"]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


@pytest.fixture
def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP()


@pytest.fixture
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the state_dict, to compare bit for bit later."""
    return copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})


def same_bits(model: nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    if now.keys() != saved.keys():
        return False
    return all(
        torch.equal(now[k].view(-1).view(torch.uint8), saved[k].view(-1).view(torch.uint8))
        if now[k].is_floating_point()
        else torch.equal(now[k], saved[k])
        for k in saved
    )
