"""Charts are drawn from reports: one bar per weight tensor, at its sparsity."""

from __future__ import annotations

import pytest

import prune_magic as pm
from prune_magic import plots


def test_one_bar_per_weight_at_its_sparsity(mlp) -> None:
    pm.prune(mlp, "clip amount=0.5")
    result = pm.prune(mlp, "clip amount=0.8 scope=global")
    fig = plots.sparsity_chart(result.after, result.before)
    ax = fig.axes[0]
    zero, before = ax.containers
    weights = [r for r in result.after.rows if r.name.endswith("weight")]
    assert [b.get_width() for b in zero] == pytest.approx([100 * r.sparsity for r in weights])
    assert [b.get_width() for b in before] == pytest.approx([50.0] * 3)
    label_at = {t.get_position()[1]: t.get_text() for t in ax.get_yticklabels()}
    bar_labels = [label_at[b.get_y() + b.get_height() / 2] for b in zero]
    assert bar_labels == ["fc1  Linear 256x64", "fc2  Linear 128x256", "out  Linear 10x128"]
    assert plots.png(fig).startswith(b"\x89PNG")


def test_no_before_outline_when_nothing_was_zero(mlp) -> None:
    result = pm.prune(mlp, "clip amount=0.5")
    assert len(plots.sparsity_chart(result.after, result.before).axes[0].containers) == 1


def test_the_width_chart_shows_each_layer_before_and_after(cnn) -> None:
    import torch

    result = pm.prune(cnn, "structured amount=0.5", example_input=torch.randn(1, 1, 8, 8))
    ax = plots.width_chart(result.after, result.before).axes[0]
    before, after = ax.containers
    assert [b.get_width() for b in before] == [8, 16, 10]  # conv, conv, classifier (norm layers left out)
    assert [b.get_width() for b in after] == [4, 8, 10]
