"""Eval functions and callbacks that misbehave: re-entrant calls, weights changed behind undo."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import prune_magic as pm
from prune_magic.engine.guard import WeightsChanged
from tests.hostile.conftest import Snapshot, refused


def test_an_eval_that_prunes_the_model_it_measures_is_refused_and_history_stays_true(mlp, x):
    pm.prune(mlp, "clip amount=0.3")
    original = Snapshot.of(mlp)  # after one step: what undo and reset must keep reaching

    def sneaky(m):
        pm.prune(m, "clip amount=0.9")
        return 1.0

    message = refused(mlp, lambda: pm.prune(mlp, "clip amount=0.5", evaluate=sneaky), "pm.prune", "sneaky")
    assert "still running on this model" in message
    original.assert_same(mlp)
    assert len(pm.history(mlp)) == 1
    pm.reset(mlp)
    assert all(bool((p != 0).all()) for n, p in mlp.named_parameters() if n.endswith("weight"))


@pytest.mark.parametrize("verb", ["undo", "reset", "forget"])
def test_undo_reset_and_forget_inside_an_eval_are_refused(mlp, verb):
    pm.prune(mlp, "clip amount=0.3")

    def meddler(m):
        getattr(pm, verb)(m)
        return 1.0

    refused(mlp, lambda: pm.prune(mlp, "clip amount=0.5", evaluate=meddler), f"pm.{verb}", "meddler")
    assert len(pm.history(mlp)) == 1


def test_pruning_a_submodule_from_inside_the_eval_is_refused_too(mlp):
    def inner(m):
        pm.prune(m[0], "clip amount=0.9")
        return 1.0

    refused(mlp, lambda: pm.prune(mlp, "clip amount=0.5", evaluate=inner), "still running")


def test_a_second_thread_is_refused_while_a_call_runs(mlp):
    started, release, errors = threading.Event(), threading.Event(), []

    def slow(m):
        started.set()
        release.wait(10)
        return 1.0

    worker = threading.Thread(target=lambda: pm.prune(mlp, "clip amount=0.5", evaluate=slow))
    worker.start()
    started.wait(10)
    try:
        pm.undo(mlp)
    except pm.PruneError as exc:
        errors.append(str(exc))
    finally:
        release.set()
        worker.join()
    assert errors and "pm.prune is still running" in errors[0]
    pm.undo(mlp)  # and once it returned, the model is free again


def test_the_sweep_refuses_a_nested_prune_and_puts_the_model_back(mlp, x):
    def nested(m):
        pm.prune(m, "clip amount=0.9")
        return 1.0

    refused(mlp, lambda: pm.sensitivity(mlp, nested, levels=(0.5,)), "pm.sensitivity is still running")


def test_an_eval_that_changes_weights_mid_sweep_stops_it_with_the_truth(mlp, x):
    pm.prune(mlp, "clip amount=0.1")
    calls = []

    def drifts(m):
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                m[0].bias.add_(1)
        return 1.0

    result = pm.sensitivity(mlp, drifts, levels=(0.3, 0.5))
    assert "drifts(model) changed the model's weights (0.bias" in result.stopped
    assert "what your code changed stays" in result.stopped
    with pytest.raises(pm.HistoryError, match=r"0\.bias changed outside"):
        pm.undo(mlp)


def test_an_eval_that_trains_is_named_and_undo_refuses_to_mix_weights(mlp, x):
    pm.prune(mlp, "clip amount=0.3")
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.1)

    def trains(m):
        optimizer.zero_grad()
        m(x).sum().backward()
        optimizer.step()
        return 1.0

    with pytest.raises(WeightsChanged) as info:
        pm.prune(mlp, "clip amount=0.5", evaluate=trains)
    message = str(info.value)
    assert "trains(model) changed the model's weights" in message and "\n" not in message
    assert "0.weight" in message
    # the weights differ from what the history recorded: undo and reset refuse, never "succeed"
    with pytest.raises(pm.HistoryError, match="changed outside prune_magic"):
        pm.reset(mlp)


def test_an_eval_that_changes_weights_after_the_steps_gets_the_steps_rolled_back(mlp):
    calls = []

    def second_call_zeroes(m):
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                m[2].bias.zero_()
        return 1.0

    before = Snapshot.of(mlp)
    with pytest.raises(WeightsChanged, match=r"second_call_zeroes\(model\) changed .*2\.bias"):
        pm.prune(mlp, "clip amount=0.5", evaluate=second_call_zeroes)
    # the clip was rolled back: every weight is as it was; only the bias the eval zeroed differs
    for name, p in mlp.named_parameters():
        if name != "2.bias":
            assert torch.equal(p, before.tensors[f"param:{name}"][-1].view(p.dtype).view(p.shape))
    assert not pm.history(mlp).entries


def test_a_progress_callback_that_changes_weights_is_refused_and_training_rolled_back(mlp, x):
    y = torch.randint(0, 4, (32,))
    pm.prune(mlp, "clip amount=0.5")
    after_clip = Snapshot.of(mlp)

    def meddling(progress):
        with torch.no_grad():
            mlp[0].weight.mul_(2)

    with pytest.raises(WeightsChanged, match=r"meddling\(model\)"):
        pm.prune(mlp, "finetune epochs=1", train=(x, y), progress=meddling)
    # finetune keeps a full copy: the rollback restores the model bit for bit
    after_clip.assert_same(mlp)


def test_an_honest_eval_still_runs_and_reading_weights_is_fine(mlp, x):
    def reads(m):
        with torch.no_grad():
            return float(m[0].weight.abs().sum() > 0) + float(m(x).mean() * 0)

    result = pm.prune(mlp, "clip amount=0.5", evaluate=reads)
    assert result.metric_before == 1.0


def test_undo_false_late_failure_says_what_stays_and_history_agrees(mlp):
    calls = []

    def fails_after(m):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return 1.0

    with pytest.raises(pm.EvaluationError) as info:
        pm.prune(mlp, "clip amount=0.5\nquantize bits=8", evaluate=fails_after, undo=False)
    message = str(info.value)
    assert "disk full" in message and "undo=False" in message and "clip amount=0.5" in message
    assert "\n" not in message
    # the clip stays (it kept no record), the quantize after it was rolled back
    w = mlp[0].weight
    assert int((w == 0).sum()) == w.numel() // 2
    levels = torch.unique(mlp[2].weight[0].abs()).numel()
    assert levels > 200 or levels > mlp[2].weight[0].numel() // 2  # not rounded to 8 bits
    assert "kept no undo record" in pm.history(mlp).note
    with pytest.raises(pm.HistoryError, match="nothing to undo"):
        pm.undo(mlp)


def test_undo_false_failure_before_any_unrecorded_step_rolls_back_everything(mlp):
    before = Snapshot.of(mlp)

    def boom(m):
        raise ValueError("nope")

    with pytest.raises(pm.EvaluationError) as info:
        pm.prune(mlp, "clip amount=0.5", evaluate=boom, undo=False)
    assert "undo=False" not in str(info.value)  # it failed before the clip: nothing stays
    before.assert_same(mlp)


def test_non_callable_evaluate_is_a_clear_error(mlp):
    refused(mlp, lambda: pm.prune(mlp, "clip amount=0.5", evaluate=3), "evaluate= must be a function", "int")


def test_a_loss_that_changes_weights_is_refused(mlp, x):
    y = torch.randint(0, 4, (32,))
    pm.prune(mlp, "clip amount=0.5")
    after_clip = Snapshot.of(mlp)

    def loss(out, target):
        with torch.no_grad():
            mlp[2].bias.add_(1)
        return nn.functional.cross_entropy(out, target)

    with pytest.raises(WeightsChanged, match=r"loss\(model\)"):
        pm.prune(mlp, "finetune epochs=1", train=(x, y), loss=loss)
    after_clip.assert_same(mlp)


def test_a_dashboard_update_whose_eval_prunes_the_model_is_refused(mlp):
    from prune_magic.rerun import PruneCall

    def nested(m):
        pm.prune(m, "clip amount=0.9")
        return 1.0

    rerun = PruneCall(mlp, evaluate=nested, tag="cell:1")
    refused(mlp, lambda: rerun("clip amount=0.5"), "still running", "nested")


def test_pruning_inside_keep_masks_is_refused_until_the_block_ends(mlp, x):
    pm.prune(mlp, "clip amount=0.5")
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.1)
    with pm.keep_masks(mlp, optimizer):
        refused(mlp, lambda: pm.prune(mlp, "clip amount=0.7"), "pm.keep_masks is still running")
        pm.report(mlp)  # reading is fine
    pm.prune(mlp, "clip amount=0.7")
    assert len(pm.history(mlp)) == 3


def test_an_eval_that_changes_the_dtype_is_seen_too(mlp):
    def doubles(m):
        m.double()
        return 1.0

    with pytest.raises(WeightsChanged, match=r"doubles\(model\) changed the model's weights"):
        pm.prune(mlp, "clip amount=0.5", evaluate=doubles)


def test_ctrl_c_after_an_unrecorded_clip_says_what_stays(mlp):
    calls = []

    def interrupted(m):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 1.0

    with pytest.raises(KeyboardInterrupt) as info:
        pm.prune(mlp, "clip amount=0.5", evaluate=interrupted, undo=False)
    assert any("undo=False: 'clip amount=0.5' kept no undo record" in n for n in info.value.__notes__)
    assert int((mlp[0].weight == 0).sum()) == 64


@pytest.mark.parametrize("change", ["double", "half"])
def test_a_dtype_change_between_steps_makes_undo_refuse_instead_of_writing_garbage(mlp, change):
    pm.prune(mlp, "clip amount=0.5")
    getattr(mlp, change)()  # swaps each .data: no version bump
    refused(mlp, lambda: pm.undo(mlp), "changed outside prune_magic", error=pm.HistoryError)
