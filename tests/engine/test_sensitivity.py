"""Sensitivity sweeps: the same numbers as pruning copies one by one, faster, and never a changed model."""

from __future__ import annotations

import copy
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
import torch
from torch import nn

import prune_magic as pm
from prune_magic.engine.sensitivity import Sensitivity, sensitivity
from tests.conftest import same_bits, state
from tests.engine.architectures import MLP, ResNet

LEVELS = (0.3, 0.6, 0.9)


def setup(factory: type[nn.Module], shape: tuple[int, ...], shuffle: bool = False):
    torch.manual_seed(0)
    model = factory().eval()
    X = torch.randn(*shape)
    y = model(X).argmax(1)

    def accuracy(m: nn.Module) -> float:
        order = torch.randperm(len(X)) if shuffle else torch.arange(len(X))
        with torch.no_grad():
            return sum(int((m(X[i]).argmax(1) == y[i]).sum()) for i in order.split(32)) / len(X)

    return model, accuracy


def reference(model: nn.Module, accuracy, names, step: str = "clip", **kwargs) -> dict[str, list[float]]:
    """The slow way: a deep copy per point."""
    out = {}
    for name in names:
        out[name] = []
        for level in LEVELS:
            twin = copy.deepcopy(model)
            pm.prune(twin, f"{step} amount={level} layers={name}", report=False, **kwargs)
            out[name].append(accuracy(twin))
    return out


@pytest.mark.parametrize(
    ("factory", "shape", "shuffle"),
    [(MLP, (96, 64), False), (ResNet, (96, 1, 8, 8), False), (ResNet, (96, 1, 8, 8), True)],
)
def test_the_sweep_matches_pruning_copies_and_leaves_the_model(factory, shape, shuffle) -> None:
    model, accuracy = setup(factory, shape, shuffle)
    before = state(model)
    result = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1)
    assert result.complete and result.baseline == 1.0
    assert result.curves == reference(model, accuracy, result.curves)
    assert same_bits(model, before)
    assert not any("forward" in vars(m) for m in model.modules())  # replays removed
    assert len(pm.history(model)) == 0


class CountingLinear(nn.Linear):
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountingLinear.calls += 1
        return super().forward(x)


def test_modules_before_the_pruned_layer_run_only_for_the_baseline() -> None:
    model, accuracy = setup(MLP, (64, 64))
    model.fc1.__class__ = CountingLinear
    CountingLinear.calls = 0
    result = sensitivity(model, accuracy, levels=LEVELS, layers=["fc2"], stop_below=-1)
    assert CountingLinear.calls == 2  # the baseline (2 batches); every level replays what it recorded
    assert result.evaluations == 4


def test_an_eval_set_too_large_to_record_is_swept_without_the_replay(monkeypatch) -> None:
    from prune_magic.engine import replay

    model, accuracy = setup(MLP, (64, 64))
    model.fc1.__class__ = CountingLinear
    replayed = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1)
    monkeypatch.setattr(replay, "BUDGET", 20_000)  # less than one batch's activations and inputs
    CountingLinear.calls = 0
    full = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1)
    assert full.curves == replayed.curves and full.baseline == replayed.baseline
    # fc1 ran at every point (2 batches each): nothing recorded, nothing replayed
    assert CountingLinear.calls == 2 * full.evaluations
    assert not any("forward" in vars(m) for m in model.modules())


def test_a_layer_stops_once_its_metric_collapses() -> None:
    model, accuracy = setup(MLP, (64, 64))
    result = sensitivity(model, accuracy, levels=(0.5, 0.99), stop_below=2.0)  # everything "collapses"
    assert all(curve == [curve[0], None] for curve in result.curves.values())


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_sweeps_restore_the_model_and_keep_what_they_measured(error) -> None:
    model, accuracy = setup(ResNet, (32, 1, 8, 8))
    before = state(model)
    calls = []

    def flaky(m: nn.Module) -> float:
        calls.append(1)
        if len(calls) == 6:
            raise error("stop")
        return accuracy(m)

    result = sensitivity(model, flaky, levels=LEVELS)
    assert not result.complete and "the model is as it was" in result.stopped
    assert same_bits(model, before)
    measured = [m for curve in result.curves.values() for m in curve if m is not None]
    assert len(measured) == 4  # baseline + 4 points before the 6th call
    pm.prune(model, "clip amount=0.5")  # the history is still usable
    pm.undo(model)


def test_an_executor_runs_the_points_on_copies() -> None:
    model, accuracy = setup(MLP, (64, 64))
    in_place = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1)
    with ThreadPoolExecutor(2) as pool:
        parallel = sensitivity(model, accuracy, levels=LEVELS, executor=pool)
    assert parallel.curves == in_place.curves


def importable_accuracy(model: nn.Module) -> float:  # process pools pickle functions by name
    torch.manual_seed(1)
    x = torch.randn(32, 64)
    with torch.no_grad():
        return float((model(x).argmax(1) == 0).float().mean())


def test_a_process_pool_still_works_without_dask() -> None:
    torch.manual_seed(0)
    model = MLP().eval()
    local = sensitivity(model, importable_accuracy, levels=LEVELS, stop_below=-1)
    with ProcessPoolExecutor(2) as pool:
        pooled = sensitivity(model, importable_accuracy, levels=LEVELS, stop_below=-1, executor=pool)
    assert pooled.complete, pooled.stopped
    assert pooled.curves == local.curves


def test_structured_sweeps_need_an_example_input_and_restore_the_model() -> None:
    model, accuracy = setup(ResNet, (32, 1, 8, 8))
    before = state(model)
    x = torch.randn(1, 1, 8, 8)
    result = sensitivity(
        model, accuracy, levels=(0.5,), step="structured", example_input=x, layers=["layer1.conv1", "fc"]
    )
    assert list(result.curves) == ["layer1.conv1", "fc"]
    assert result.curves["layer1.conv1"][0] is not None
    assert "nothing to prune structurally" in result.stopped  # fc is the output layer
    assert same_bits(model, before) and model.layer1.conv1.out_channels == 16


def test_budget_and_recipe() -> None:
    result = Sensitivity(
        "clip", (0.3, 0.6, 0.9), 0.9, {"a": [0.9, 0.895, 0.5], "b": [0.85, None, None], "c": [0.9, 0.7, 0.9]}
    )
    assert result.budget(0.01) == {"a": 0.6, "b": 0.0, "c": 0.3}
    assert result.recipe(0.01) == "clip amount=0.6 layers=a\nclip amount=0.3 layers=c"
    assert "stopped early" not in str(result)


def explored() -> Sensitivity:
    result = Sensitivity(
        "clip", (0.5, 0.9), 1.0,
        {"tough": [0.99, 0.98], "fragile": [0.8, 0.2]},
        sizes={"tough": 300, "fragile": 100},
    )  # fmt: skip
    return result


def test_allocation_gives_less_to_sensitive_layers_and_hits_the_target() -> None:
    result = explored()
    amounts = result.allocate(0.5)
    assert amounts["tough"] > amounts["fragile"]
    zeroed = amounts["tough"] * 300 + amounts["fragile"] * 100
    assert zeroed == pytest.approx(0.5 * 400, rel=1e-3)
    assert result.allocate(0.0) == {"tough": 0.0, "fragile": 0.0}
    assert result.allocate(0.99) == {"tough": 0.9, "fragile": 0.9}  # capped at the highest level measured


def test_pinned_layers_keep_their_amount() -> None:
    amounts = explored().allocate(0.5, pinned={"fragile": 0.0})
    assert amounts["fragile"] == 0.0
    assert amounts["tough"] == pytest.approx(200 / 300, abs=1e-3)


def test_estimates_add_single_layer_drops() -> None:
    result = explored()
    assert result.drop("tough", 0.25) == pytest.approx(0.005)
    assert result.estimate({"tough": 0.5, "fragile": 0.5}) == pytest.approx(1.0 - 0.01 - 0.2)


class Reuse(nn.Module):
    """One ReLU and one pool module, each called before and after the swept layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


def test_modules_called_before_and_after_the_layer_are_replayed_only_before() -> None:
    model, accuracy = setup(Reuse, (96, 1, 8, 8))
    result = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1)
    assert result.complete, result.stopped
    assert result.curves == reference(model, accuracy, result.curves)


class InPlace(nn.Module):
    """Outputs changed in place after their call: an in-place ReLU, a residual ``+=``, a reused BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv1(x)))
        out = self.conv2(x)
        out += x  # changes conv2's output in place
        out = self.relu(self.bn(self.conv3(out)))  # the BatchNorm and the ReLU run again
        return self.fc(out.mean((2, 3)))


def randomized_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    return model


def test_outputs_changed_in_place_are_replayed_only_while_unchanged() -> None:
    model, accuracy = setup(InPlace, (96, 1, 8, 8))
    randomized_bn(model)
    before = state(model)
    model.conv1.__class__ = CountingConv
    CountingConv.calls = 0
    result = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1)
    assert CountingConv.calls == 3 + 3 * 3  # 3 batches: the baseline, conv1's levels; replayed for the others
    assert result.complete, result.stopped
    assert result.curves == reference(model, accuracy, result.curves)
    assert same_bits(model, before)


class CountingConv(nn.Conv2d):
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountingConv.calls += 1
        return super().forward(x)


class Tied(nn.Module):
    """``b`` shares ``a``'s weight and runs before it: pruning ``a`` changes what runs before ``a``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.act = nn.Tanh()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.a(self.act(self.b(x))))


def test_nothing_is_replayed_before_a_layer_whose_weights_run_earlier() -> None:
    model, accuracy = setup(Tied, (64, 16))
    result = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1)
    assert result.complete, result.stopped
    assert result.curves == reference(model, accuracy, result.curves)


def test_inputs_are_compared_exactly_and_with_keywords() -> None:
    """Replay needs the very inputs of the baseline: permuted rows have the same sum, and a
    keyword input is an input too."""
    torch.manual_seed(0)
    model = MLP().eval()
    X = torch.randint(-3, 4, (64, 64)).float()  # integer values: any order sums to the same
    y = model(X).argmax(1)
    calls = []

    def permuted(m: nn.Module) -> float:  # rows in another order at every call
        calls.append(1)
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(len(calls)))
        with torch.no_grad():
            return int((m(X[order]).argmax(1) == y[order]).sum()) / len(X)

    result = sensitivity(model, permuted, levels=LEVELS, stop_below=-1)
    calls.clear()
    assert result.curves == reference(model, permuted, result.curves)

    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = model

        def forward(self, *, x: torch.Tensor) -> torch.Tensor:
            return self.mlp(x)

    wrapped = Keywords()
    calls.clear()

    def by_keyword(m: nn.Module) -> float:
        calls.append(1)
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(len(calls)))
        with torch.no_grad():
            return int((m(x=X[order]).argmax(1) == y[order]).sum()) / len(X)

    result = sensitivity(wrapped, by_keyword, levels=LEVELS, stop_below=-1)
    calls.clear()
    assert result.curves == reference(wrapped, by_keyword, result.curves)


def test_an_eval_function_in_inference_mode() -> None:
    model, _ = setup(InPlace, (64, 1, 8, 8))
    randomized_bn(model)
    X = torch.randn(64, 1, 8, 8)
    y = model(X).argmax(1)

    def accuracy(m: nn.Module) -> float:
        with torch.inference_mode():
            return sum(int((m(X[i]).argmax(1) == y[i]).sum()) for i in torch.arange(64).split(32)) / 64

    before = state(model)
    result = sensitivity(model, accuracy, levels=LEVELS, stop_below=-1)
    assert result.complete, result.stopped
    assert result.curves == reference(model, accuracy, result.curves)
    assert same_bits(model, before)


def test_a_perplexity_sweep_reads_a_rise_as_the_loss() -> None:
    sweep = Sensitivity(
        "clip", (0.5, 0.9), 10.0, {"a": [10.2, 30.0], "b": [12.0, 14.0]}, metric_name="perplexity",
        sizes={"a": 100, "b": 100},
    )  # fmt: skip
    assert sweep.lower_is_better and sweep.default_limit() == 20.0
    assert sweep.collapsed(30.0, 20.0) and not sweep.collapsed(5.0, 20.0)
    assert sweep.budget(tolerance=0.5) == {"a": 0.5, "b": 0.0}
    assert sweep.drop("b", 0.9) == pytest.approx(4.0)
    assert sweep.estimate({"a": 0.5, "b": 0.5}) == pytest.approx(10.0 + 0.2 + 2.0)
    assert sweep.estimate({"a": 0.9, "b": 0.9}) == 30.0  # (never past the worst the sweep saw)
    amounts = sweep.allocate(0.5)
    assert amounts["a"] > amounts["b"]  # the layer that costs less perplexity gives more weights
