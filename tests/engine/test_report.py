"""report(): per-tensor rows, totals, sizes and MACs."""

from __future__ import annotations

import pytest
import torch

import prune_magic as pm


def test_rows_and_totals_after_clipping(mlp) -> None:
    pm.prune(mlp, "clip amount=0.75 layers=fc1")
    r = pm.report(mlp)
    fc1 = r.row("fc1.weight")
    assert (fc1.module_type, fc1.shape, fc1.params, fc1.nonzero) == ("Linear", (256, 64), 16384, 4096)
    assert fc1.sparsity == 0.75
    assert r.params == sum(p.numel() for p in mlp.parameters())
    assert r.dense_bytes == 4 * r.params
    assert r.sparse_bytes == sum(-(-row.params // 8) + 4 * row.nonzero for row in r.rows)
    assert r.sparse_bytes < r.dense_bytes


def test_macs_of_linear_and_conv_layers(mlp, cnn) -> None:
    r = pm.report(mlp, torch.randn(1, 64))
    assert r.macs == 64 * 256 + 256 * 128 + 128 * 10
    assert r.row("fc2.weight").macs == 256 * 128
    c = pm.report(cnn, torch.randn(2, 1, 8, 8))
    assert c.row("features.0.weight").macs == 2 * 8 * 8 * 8 * 9
    assert c.row("classifier.weight").macs == 2 * 1024 * 10


def test_text_and_html(mlp) -> None:
    pm.prune(mlp, "clip amount=0.5")
    r = pm.report(mlp, torch.randn(1, 64))
    text = str(r)
    assert "fc1.weight" in text and "50.0%" in text and "bitmask + nonzero values" in text
    assert "MACs" in text
    html = r._repr_html_()
    assert html.startswith("<table") and "fc2.weight" in html


def test_counting_macs_leaves_batchnorm_statistics_and_modes_alone(cnn) -> None:
    from tests.conftest import same_bits, state

    cnn.train()
    before = state(cnn)
    pm.report(cnn, torch.randn(4, 1, 8, 8))
    assert same_bits(cnn, before)
    assert cnn.training and cnn.features[1].training


@pytest.mark.parametrize("name", ["resnet", "densenet", "mobilenet_v2", "shared_module"])
def test_macs_agree_with_torchs_flop_counter(name: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from tests.engine.architectures import ARCHITECTURES

    factory, shape = ARCHITECTURES[name]
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(shape)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    root = type(model).__name__
    expected = {
        k[len(root) + 1 :]: sum(v.values()) // 2
        for k, v in counter.get_flop_counts().items()
        if k.startswith(root + ".")
    }
    total, per_module = pm.count_macs(model, x)
    assert total == counter.get_total_flops() // 2 > 0
    assert per_module == expected


@pytest.mark.parametrize(("seconds", "least"), [(0.0, 4), (0.15, 2)])
def test_latency_times_at_least_three_passes_unless_one_pass_is_slow(seconds: float, least: int) -> None:
    import time

    from prune_magic.engine.report import latency

    calls: list[int] = []

    class Slow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            time.sleep(seconds)
            return x

    measured = latency(Slow(), torch.zeros(1), budget=0.1)
    assert len(calls) >= least  # the warm-up and the timed passes
    assert measured >= seconds
    if seconds:
        assert len(calls) == 2  # a pass over the budget is timed once after the warm-up


def test_a_timing_knows_when_two_spreads_overlap() -> None:
    from prune_magic.engine.report import Timing, timing

    measured = timing(torch.nn.Linear(4, 4), torch.zeros(1, 4), budget=0.02)
    assert measured.low <= measured.median <= measured.high and measured.runs >= 3
    assert Timing(1.0, 0.9, 1.1, 5).overlaps(Timing(1.05, 1.0, 1.2, 5))
    assert not Timing(1.0, 0.9, 1.1, 5).overlaps(Timing(0.5, 0.45, 0.55, 5))
