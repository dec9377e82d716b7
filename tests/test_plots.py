"""Charts are drawn from reports: one bar per weight tensor, at its sparsity."""

from __future__ import annotations

import pytest
import torch

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
    assert bar_labels == ["fc1 · Linear 256×64", "fc2 · Linear 128×256", "out · Linear 10×128"]
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
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [
        "features.0 · Conv2d 8×1×3×3",
        "features.3 · Conv2d 16×8×3×3",
        "classifier · Linear 10×1024",
    ]


def test_the_tried_chart_starts_at_the_cells_run_and_keeps_a_sensible_axis() -> None:
    fig = plots.tried_chart([(0.9, 0.880), (0.2, 0.890)], "accuracy", first=(0.5, 0.8875), start=0.89)
    ax = fig.axes[0]
    tried, first = ax.get_lines()[:2]
    assert list(tried.get_xdata()) == [0.2, 0.5, 0.9]  # the cell's own value among the points, in order
    assert list(first.get_xdata()) == [0.5]
    assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == 0.89 for line in ax.get_lines())
    low, high = ax.get_ylim()
    assert high - low >= 0.08  # one test sample (0.01) is not a cliff across the whole axis
    assert 0 <= low < 0.880 and 0.890 < high <= 1


def test_metric_range_stays_inside_zero_and_one_for_fractions() -> None:
    assert plots.metric_range([0.99, 1.0]) == (pytest.approx(0.935), 1.0)
    low, high = plots.metric_range([120.0, 121.0])  # a loss, say: not clipped
    assert high - low >= 12


def test_sensitivity_curves_are_labelled_by_layer_name_type_and_shape(mlp) -> None:
    x = torch.randn(64, 64)
    y = mlp(x).argmax(1)
    sweep = pm.sensitivity(mlp, lambda m: float((m(x).argmax(1) == y).float().mean()), levels=(0.5, 0.9))
    fig = plots.sensitivity_chart(sweep)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:3] == ["fc1 · Linear 256×64", "fc2 · Linear 128×256", "out · Linear 10×128"]
    assert fig.legends[0].get_texts()[0].get_fontsize() >= 8  # not the tiny legend of before
    assert "fc1 · Linear 256×64" in sweep._repr_html_()


def test_sensitivity_table_values_share_one_format() -> None:
    from prune_magic.engine.sensitivity import Sensitivity

    sweep = Sensitivity("clip", (0.5, 0.9), 0.9644, {"fc1": [0.96, 0.9644]}, metric_name="loss")
    assert [sweep.cell(m) for m in (0.96, 0.9644, None)] == ["0.9600", "0.9644", "-"]
    accuracy = Sensitivity("clip", (0.5, 0.9), 0.9644, {"fc1": [0.96, 0.5]}, metric_name="accuracy")
    assert [accuracy.cell(m) for m in (0.96, 0.9644)] == ["96.0%", "96.4%"]
    assert "<td style='text-align:right'>96.0%</td>" in accuracy._repr_html_()


def test_charts_are_rendered_at_twice_their_natural_size_and_shown_at_it(mlp) -> None:
    from prune_magic.views import PruneView, img

    result = pm.prune(mlp, "clip amount=0.5")
    figure = plots.sparsity_chart(result.after, result.before)
    image = plots.png(figure)
    pixels = int.from_bytes(image[16:20], "big")
    assert pixels == int(figure.get_figwidth() * 96 * 2)  # sharp on a high-density screen
    assert plots.css_width(image) == int(figure.get_figwidth() * 96)  # ... and no larger than drawn
    assert f"width='{pixels // 2}'" in img(image, "chart") and "max-width:100%" in img(image, "chart")
    html = PruneView(result, "mlp")._repr_html_()
    assert f"width='{pixels // 2}'" in html


def test_a_structured_histogram_says_what_the_step_did(cnn) -> None:
    from prune_magic.engine.report import histogram
    from prune_magic.views import structured_note

    result = pm.prune(cnn, "structured amount=0.5", example_input=torch.randn(1, 1, 8, 8))
    note = structured_note(result, "features.3.weight")
    assert note.startswith("structured step: 16 → 8 outputs kept, 8 → 4 inputs")
    fig = plots.magnitude_histogram(histogram(cnn.features[3].weight), "features.3.weight", note=note)
    assert any(t.get_text() == note for t in fig.axes[0].texts)
    assert structured_note(pm.prune(cnn, "clip amount=0.5"), "features.3.weight") == ""


def pixels(png: bytes) -> bytes:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGBA").tobytes()


def test_a_live_chart_redrawn_for_a_move_looks_like_one_drawn_anew(mlp) -> None:
    from prune_magic.engine.report import histogram

    start = histogram(mlp.fc1.weight)  # before the cell, as the dashboard draws it
    first = pm.prune(mlp, "clip amount=0.5 scope=global", tag="cell")
    live, cut = plots.Live(), plots.Live()
    bars = live.sparsity(first.after, first.before)
    frame = live.figure
    old_cut = cut.histogram(start, "fc1", 0.01)
    pm.undo(mlp)
    moved = pm.prune(mlp, "clip amount=0.8 scope=global", tag="cell")  # a slider move
    assert pixels(live.sparsity(moved.after, moved.before)) == pixels(
        plots.Live().sparsity(moved.after, moved.before)
    )
    assert live.figure is frame and pixels(live.sparsity(moved.after, moved.before)) != pixels(bars)
    assert pixels(cut.histogram(start, "fc1", 0.02)) == pixels(plots.Live().histogram(start, "fc1", 0.02))
    assert pixels(cut.histogram(start, "fc1", 0.02)) != pixels(old_cut)
    assert plots.css_width(bars) == plots.css_width(
        plots.png(plots.sparsity_chart(first.after, first.before))
    )
    # no cut (a step that does not clip): a new frame, without the cut's legend
    assert cut.histogram(start, "fc1") and not cut.moving and cut.figure.axes[0].get_legend() is None


def test_a_live_width_chart_redrawn_for_a_move_looks_like_one_drawn_anew(cnn) -> None:
    x = torch.randn(1, 1, 8, 8)
    first = pm.prune(cnn, "structured amount=0.5", example_input=x, tag="cell")
    live = plots.Live()
    chart = live.widths(first.after, first.before)
    frame = live.figure
    pm.undo(cnn)
    moved = pm.prune(cnn, "structured amount=0.25", example_input=x, tag="cell")  # a slider move
    again = live.widths(moved.after, moved.before)
    assert live.figure is frame and pixels(again) != pixels(chart)
    assert pixels(again) == pixels(plots.Live().widths(moved.after, moved.before))


def test_the_tolerance_band_of_a_perplexity_sweep_lies_above_the_baseline() -> None:
    from prune_magic.engine.sensitivity import Sensitivity

    sweep = Sensitivity("clip", (0.5, 0.9), 10.0, {"a": [10.2, 30.0]}, metric_name="perplexity")
    band = next(p for p in plots.sensitivity_chart(sweep, tolerance=0.5).axes[0].patches)
    assert (band.get_y(), band.get_y() + band.get_height()) == (10.0, 10.5)
