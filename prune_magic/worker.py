"""The dashboards' worker: their actions run one at a time on a thread of their own, and a cell
waits for them before it runs (:func:`wait_for_updates`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable


class Worker:
    """Runs a dashboard's actions one at a time on a thread of its own.

    The kernel stays free to handle the next widget message while the model is re-pruned
    and re-evaluated, and moves are debounced: a slider move replaces a move still waiting,
    so dragging through ten values costs at most two re-applies, not ten. A cell waits
    for the worker before it runs (:func:`wait_for_updates`), so code never sees a model
    in the middle of an update.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[str, Callable[[], None]]] = []
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        _WORKERS.add(self)

    def submit(self, kind: str, task: Callable[[], None]) -> None:
        """Queue ``task``; a waiting task of kind ``"update"`` is replaced by a newer one."""
        with self._lock:
            if kind == "update":
                self._queue = [(k, t) for k, t in self._queue if k != "update"]
            self._queue.append((kind, task))
            if self._thread is None:
                self._idle.clear()
                self._thread = threading.Thread(target=self._run, name="prune-magic-dashboard", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    self._idle.set()
                    return
                _, task = self._queue.pop(0)
            task()

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    @property
    def waiting(self) -> int:
        """Actions queued behind the one running."""
        with self._lock:
            return len(self._queue)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued action has run; False if ``timeout`` passed first."""
        return self._idle.wait(timeout)


_WORKERS: weakref.WeakSet[Worker] = weakref.WeakSet()


def wait_for_updates(timeout: float | None = None) -> None:
    """Wait until no dashboard is re-pruning a model (called before every cell runs)."""
    for worker in list(_WORKERS):
        worker.wait(timeout)
