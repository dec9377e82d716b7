"""Undo, reset and history: nothing lost, bit for bit, and honest when it can't be."""

from __future__ import annotations

import pytest
import torch

import prune_magic as pm
from prune_magic.engine import clip as clip_module
from tests.conftest import same_bits, state


def test_undo_goes_back_one_step_and_reset_to_the_start(mlp) -> None:
    original = state(mlp)
    pm.prune(mlp, "clip amount=0.5")
    after_first = state(mlp)
    pm.prune(mlp, "clip amount=0.8 scope=global\nclip threshold=0.05 layers=out")
    assert [e.step for e in pm.history(mlp).entries] == [
        "clip amount=0.5",
        "clip amount=0.8 scope=global",
        "clip threshold=0.05 layers=out",
    ]
    assert pm.undo(mlp).step == "clip threshold=0.05 layers=out"
    pm.undo(mlp)
    assert same_bits(mlp, after_first)
    pm.prune(mlp, "clip sigma=1")
    assert len(pm.reset(mlp)) == 2
    assert same_bits(mlp, original)
    assert len(pm.history(mlp)) == 0


def test_history_lists_steps_with_sparsity_and_undo_memory(mlp) -> None:
    pm.prune(mlp, "clip amount=0.9 scope=global")
    text = str(pm.history(mlp))
    assert "clip amount=0.9 scope=global" in text and "90.0%" in text and "KiB" in text
    assert "<table>" in pm.history(mlp)._repr_html_()


def test_the_undo_record_costs_the_changed_values_plus_one_bit_per_weight(mlp) -> None:
    pm.prune(mlp, "clip amount=0.9 scope=global")
    entry = pm.history(mlp).entries[-1]
    n = sum(t.param.numel() for t in pm.select(mlp))
    changed = sum(r.changed for r in entry.records)
    assert changed == round(0.9 * n)
    assert entry.undo_bytes <= changed * 4 + n / 8 + 8 * len(entry.records)


def test_nothing_to_undo_says_so(mlp) -> None:
    with pytest.raises(pm.HistoryError, match="nothing to undo: no prune_magic step has been applied"):
        pm.undo(mlp)
    with pytest.raises(pm.HistoryError, match="nothing to reset"):
        pm.reset(mlp)


def test_training_outside_prune_magic_is_noticed(mlp) -> None:
    pm.prune(mlp, "clip amount=0.5")
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    mlp(torch.randn(4, 64)).sum().backward()
    opt.step()
    trained = state(mlp)
    with pytest.raises(
        pm.HistoryError, match=r"cannot undo: .* changed outside prune_magic since the last step"
    ):
        pm.undo(mlp)
    assert same_bits(mlp, trained)
    result = pm.prune(mlp, "clip amount=0.6")  # builds on the trained weights
    assert "history starts again" in result.note
    pm.undo(mlp)
    assert same_bits(mlp, trained)


def test_forget_keeps_the_weights_and_frees_the_record(mlp) -> None:
    pm.prune(mlp, "clip amount=0.5")
    pruned = state(mlp)
    assert pm.forget(mlp) > 0
    assert same_bits(mlp, pruned) and len(pm.history(mlp)) == 0


def test_a_dry_run_changes_nothing_and_undo_still_works(mlp) -> None:
    pm.prune(mlp, "clip amount=0.3")
    before = state(mlp)
    result = pm.prune(mlp, "clip amount=0.9 scope=global", dry_run=True)
    assert result.dry_run and result.after.sparsity > 0.85
    assert same_bits(mlp, before) and len(pm.history(mlp)) == 1
    pm.undo(mlp)


def test_an_eval_that_raises_leaves_the_model_as_it_was(mlp) -> None:
    before = state(mlp)
    calls = []

    def evaluate(model):
        calls.append(1)
        if len(calls) == 2:
            raise ZeroDivisionError("oops")
        return 0.5

    with pytest.raises(pm.EvaluationError, match=r"evaluate\(model\) raised ZeroDivisionError: oops"):
        pm.prune(mlp, "clip amount=0.5\nclip amount=0.9", evaluate=evaluate)
    assert same_bits(mlp, before) and len(pm.history(mlp)) == 0


@pytest.mark.parametrize("bad", ["high", None, [0.5], {"acc": "x"}, {}])
def test_an_eval_must_return_a_number_or_a_dict_of_numbers(mlp, bad) -> None:
    with pytest.raises(pm.EvaluationError, match="return a number"):
        pm.prune(mlp, "clip amount=0.5", evaluate=lambda m: bad)


def test_metrics_before_and_after(mlp) -> None:
    x = torch.randn(32, 64)
    target = mlp(x).argmax(1)
    result = pm.prune(
        mlp, "clip amount=0.95", evaluate=lambda m: {"agree": (m(x).argmax(1) == target).float().mean()}
    )
    assert result.metric_before == {"agree": 1.0}
    assert result.metric_after["agree"] < 1.0
    assert any(line.startswith("agree 100.0% -> ") and line.endswith(" points)") for line in result.lines())
    assert [(m.name, m.before) for m in result.metrics()] == [("agree", 1.0)]


def test_the_result_carries_its_notes_as_facts_the_text_and_the_view_both_draw(mlp) -> None:
    from prune_magic.views import PruneView

    pm.prune(mlp, "clip amount=0.5", tag="cell")
    result = pm.prune(
        mlp, "clip amount=1e-9 layers=fc1\nclip threshold=1e9 layers=fc2", dry_run=True, tag="cell"
    )
    kinds = [n.kind for n in result.remarks()]
    assert kinds == ["dry run", "re-run", "warning"]
    text, view = result.lines(), dict(PruneView(result, "mlp").summary())
    assert text[:2] == ["dry run: the model was not changed", str(result.remarks()[1])]
    assert text[-1].startswith("warning: fc2.weight now entirely zero")
    assert [v for k, v in PruneView(result, "mlp").summary() if k == "note"] == [
        str(n) for n in result.remarks()
    ]
    assert view["sparsity"].endswith("% of all parameters")


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_a_step_interrupted_half_way_is_rolled_back(mlp, monkeypatch, exc) -> None:
    pm.prune(mlp, "clip amount=0.2")
    before = state(mlp)
    real = clip_module._zero_below
    calls = []

    def flaky(target, *args):
        calls.append(target.name)
        if len(calls) == 3:  # two tensors already clipped in this step
            raise exc
        return real(target, *args)

    monkeypatch.setattr(clip_module, "_zero_below", flaky)
    with pytest.raises(exc):
        pm.prune(mlp, "clip threshold=0.05")
    assert same_bits(mlp, before)
    monkeypatch.undo()
    pm.undo(mlp)  # the history still works: the rollback was not an outside change


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_a_global_clip_interrupted_half_way_is_rolled_back(mlp, monkeypatch, exc) -> None:
    """A global clip zeroes tensor by tensor too, after one select: a failure after two of them."""
    before = state(mlp)
    real = clip_module._zero_below
    calls = []

    def flaky(target, *args):
        calls.append(target.name)
        if len(calls) == 3:  # two tensors already zeroed and recorded
            raise exc
        return real(target, *args)

    monkeypatch.setattr(clip_module, "_zero_below", flaky)
    with pytest.raises(exc):
        pm.prune(mlp, "clip amount=0.9 scope=global")
    assert len(calls) == 3 and same_bits(mlp, before)
    assert len(pm.history(mlp)) == 0


def test_the_same_tag_again_replaces_its_steps_instead_of_compounding(mlp) -> None:
    original = state(mlp)
    pm.prune(mlp, "clip amount=0.5", tag="cell-1")
    once = state(mlp)
    result = pm.prune(mlp, "clip amount=0.5", tag="cell-1")
    assert result.replaced == 1
    assert same_bits(mlp, once)
    assert len(pm.history(mlp)) == 1
    pm.prune(mlp, "clip amount=0.7 scope=global", tag="cell-1")  # edited cell: from the same start
    assert pm.history(mlp).entries[-1].step == "clip amount=0.7 scope=global"
    pm.undo(mlp)
    assert same_bits(mlp, original)


def test_another_tag_builds_on_the_current_weights(mlp) -> None:
    pm.prune(mlp, "clip amount=0.5", tag="cell-1")
    result = pm.prune(mlp, "clip amount=0.5 layers=fc1", tag="cell-2")
    assert result.replaced == 0
    assert len(pm.history(mlp)) == 2
    again = pm.prune(mlp, "clip amount=0.5", tag="cell-1")  # cell-2 ran since: compounds
    assert again.replaced == 0
    assert len(pm.history(mlp)) == 3


def test_a_failed_rerun_puts_the_previous_run_back(mlp) -> None:
    pm.prune(mlp, "clip amount=0.5\nclip threshold=0.01", tag="cell-1")
    after_first_run = state(mlp)

    def broken(model):
        raise RuntimeError("eval is broken")

    with pytest.raises(pm.EvaluationError):
        pm.prune(mlp, "clip amount=0.9", tag="cell-1", evaluate=broken)
    assert same_bits(mlp, after_first_run)
    assert [e.step for e in pm.history(mlp).entries] == ["clip amount=0.5", "clip threshold=0.01"]
    pm.prune(mlp, "clip amount=0.9", tag="cell-1", dry_run=True)
    assert same_bits(mlp, after_first_run)
    pm.reset(mlp)


def test_a_rerun_after_training_builds_on_the_trained_weights(mlp) -> None:
    pm.prune(mlp, "clip amount=0.5", tag="cell-1")
    with torch.no_grad():
        mlp.fc1.weight.add_(0.01)  # someone trained
    trained = state(mlp)
    result = pm.prune(mlp, "clip amount=0.5", tag="cell-1")
    assert result.replaced == 0
    assert "changed outside prune_magic" in result.note
    pm.undo(mlp)
    assert same_bits(mlp, trained)


def test_a_rerun_reuses_the_start_metric_of_the_same_eval_function(mlp) -> None:
    calls = []

    def evaluate(model):
        calls.append(1)
        return 0.5

    first = pm.prune(mlp, "clip amount=0.5", evaluate=evaluate, tag="cell-1")
    assert len(calls) == 2  # before and after
    again = pm.prune(mlp, "clip amount=0.7", evaluate=evaluate, tag="cell-1")
    assert len(calls) == 3 and again.metric_before == first.metric_before  # only after
    pm.prune(mlp, "clip amount=0.6", evaluate=lambda m: 0.25, tag="cell-1")  # another function: measured
    assert pm.history(mlp).entries[-1].start_metric[1] == 0.25


def test_an_eval_that_forgets_model_eval_cannot_break_undo(cnn) -> None:
    """The engine calls evaluate in eval mode: BatchNorm statistics stay as the step left them."""
    import prune_magic as pm

    x = torch.randn(16, 1, 8, 8)
    modes: list[bool] = []

    def careless(model) -> float:  # no model.eval(): BatchNorm would update its running stats
        modes.append(model.training)
        with torch.no_grad():
            return float(model(x).mean())

    cnn.train()
    before = state(cnn)
    pm.prune(cnn, "clip amount=0.5", evaluate=careless)
    pm.undo(cnn)
    assert same_bits(cnn, before)  # running_mean/var and num_batches_tracked included
    assert modes == [False, False] and cnn.training  # its own mode back afterwards
    sweep = pm.sensitivity(cnn, careless, levels=[0.5])
    assert same_bits(cnn, before) and sweep.complete


def test_the_version_changes_with_every_step_undo_forget_and_outside_change(mlp) -> None:
    from prune_magic.engine.history import version

    seen = [version(mlp)]
    pm.prune(mlp, "clip amount=0.5", tag="cell")
    seen.append(version(mlp))
    assert version(mlp) == seen[-1]  # unchanged while nothing happens
    pm.prune(mlp, "clip amount=0.6", tag="cell")  # a re-run: rewound and applied again
    seen.append(version(mlp))
    pm.undo(mlp)
    seen.append(version(mlp))
    pm.prune(mlp, "clip amount=0.5")
    seen.append(version(mlp))
    with torch.no_grad():
        mlp.fc1.weight.mul_(2)  # outside prune_magic
    seen.append(version(mlp))
    pm.forget(mlp)
    seen.append(version(mlp))
    assert len(set(seen)) == len(seen)
