"""What a live view repeats: :class:`PruneCall`, a ``pm.prune`` call with everything but the
recipe fixed (the dashboard's sliders and the explorer's dry runs apply the cell's recipe again
through it), and the small helpers both views show results with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .engine import PruneResult, Recipe


@dataclass
class PruneCall:
    """A ``pm.prune`` call with everything but the recipe fixed: applies a cell's recipe again, as
    the cell would (same model, eval, input and tag)."""

    model: Any
    evaluate: Any = None
    example_input: Any = None
    data: Any = None
    tag: str | None = None
    train: Any = None
    loss: Any = None
    progress: Any = None  # called while a step trains (the dashboard's status line)

    def __call__(
        self, recipe: str | Recipe, dry_run: bool = False, latency: bool | None = None
    ) -> PruneResult:
        """``latency``: time forward passes (default: when the recipe removes channels, as the cell does)."""
        from . import engine

        parsed = engine.parse_recipe(recipe)  # (once: the engine takes the Recipe as it is)
        return engine.prune(
            self.model,
            parsed,
            evaluate=self.evaluate,
            example_input=self.example_input,
            tag=self.tag,
            data=self.data,
            dry_run=dry_run,
            train=self.train,
            loss=self.loss,
            progress=self.progress,
            latency=parsed.removes_channels if latency is None else latency,
        )

    def measure(self) -> Any:
        """The metric of the model as it is now (None without an eval function)."""
        from .engine.prune import measure_metric

        return measure_metric(self.model, self.evaluate)

    def dry_run(self, recipe: str | Recipe) -> PruneResult:
        """What ``recipe`` would do, measured, with the model left as it is."""
        return self(recipe, dry_run=True)


def first_metric(result: PruneResult) -> float | None:
    metrics = result.metrics()
    return metrics[0].after if metrics else None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def show_image(widget: Any, image: bytes) -> None:
    """Put a :func:`~prune_magic.plots.png` into an ``ipywidgets.Image`` at its natural size (at
    most the output's width), not stretched to fill the output."""
    from .plots import css_width

    widget.width = str(css_width(image))
    widget.layout.max_width = "100%"
    widget.layout.height = "auto"
    widget.value = image


def with_widget(static: dict[str, Any], box: Any) -> dict[str, Any]:
    """The static bundle (text, HTML, PNG for viewers without widgets) plus the widget view."""
    view = box._repr_mimebundle_()
    return {**static, **{k: v for k, v in view.items() if k != "text/plain"}}


def slider_bounds(option: str, value: object) -> tuple[float, float, float] | None:
    """(min, max, step) of the slider for a numeric recipe option, or None."""
    if not isinstance(value, float):
        return None
    if option == "amount":
        return 0.0, 0.99, 0.01
    if option == "sigma":
        return 0.0, max(3.0, 2 * value), 0.05
    if option == "threshold":
        top = 2 * value if value > 0 else 0.1
        return 0.0, top, top / 100
    return None
