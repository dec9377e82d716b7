"""Outputs that update in place while work runs, for the magics: a sweep's chart filling in, a
progress bar while a step trains (a display in a notebook, a ``\\r`` line elsewhere).
"""

from __future__ import annotations

import html
import sys
import time
from typing import Any

from IPython.core.getipython import get_ipython
from IPython.display import display

from .engine.sensitivity import Sensitivity
from .engine.train import Progress
from .views import SweepView, progress_text


class InPlace:
    """An output that updates in place while work runs: a display in a notebook, a ``\\r`` line elsewhere."""

    def __init__(self, every: float) -> None:
        self.handle: Any = None
        self.every, self.last, self.printed = every, 0.0, False
        self.kernel = "ipykernel" in sys.modules and getattr(get_ipython(), "kernel", None) is not None

    def due(self, now: bool = False) -> bool:
        """Whether to redraw: at most once every ``every`` seconds, unless ``now``."""
        tick = time.monotonic()
        if not now and tick - self.last < self.every:
            return False
        self.last = tick
        return True

    def line(self, text: str) -> None:
        print(f"\r{text}".ljust(100), end="", flush=True)
        self.printed = True

    def put(self, obj: Any, raw: bool = False) -> None:
        if self.handle is None:
            self.handle = display(obj, raw=raw, display_id=True)
        else:
            self.handle.update(obj, raw=raw)

    def end_line(self) -> None:
        if self.printed:
            print()
            self.printed = False


class SweepProgress(InPlace):
    """Shows a sweep while it runs: its chart filling in (notebook) or a progress line."""

    def __init__(self, name: str, tolerance: float, charts: bool) -> None:
        super().__init__(every=1.0)  # the chart fills in about once a second
        self.name, self.tolerance, self.charts = name, tolerance, charts

    def show(self, partial: Sensitivity) -> None:
        points = sum(m is not None for ms in partial.curves.values() for m in ms)
        total = len(partial.curves) * len(partial.levels)
        if not self.kernel:
            self.line(f"sensitivity [{'#' * (20 * points // total):<20}] {points}/{total} points")
        elif self.due():
            self.put(SweepView(partial, self.name, self.tolerance, self.charts, running=True))

    def done(self, view: object) -> None:
        """Show the finished sweep's view (a :class:`~prune_magic.views.SweepView` or an explorer)."""
        self.end_line()
        if self.handle is None:
            display(view)
        else:
            self.handle.update(view)


class TrainingProgress(InPlace):
    """While a step trains: a progress bar that updates in place (notebook) or a progress line."""

    def __init__(self) -> None:
        super().__init__(every=0.5)

    def __call__(self, progress: Progress) -> None:
        if not self.due(now=progress.point is not None):
            return
        text = progress_text(progress)
        if not self.kernel:
            self.line(text)
            return
        total = progress.total or progress.done
        bar = f"<progress value='{progress.done}' max='{total}'></progress> <code>{html.escape(text)}</code>"
        self.put({"text/html": bar, "text/plain": text}, raw=True)

    def close(self) -> None:
        """Take the bar away: the result shows the whole curve."""
        self.end_line()
        if self.handle is not None:
            self.handle.update({"text/plain": "", "text/html": ""}, raw=True)
