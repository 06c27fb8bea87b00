"""Connection attempts off the reconcile loop, so one dead or silent host never stalls the rest.

An attempt runs in its own thread (an unanswering OVSDB server blocks ovsdbapp's schema fetch
indefinitely; a TCP connect can take minutes). The loop asks with ``want`` and collects the
outcome with ``take``; a failed key is retried no sooner than ``retry`` seconds later.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class Failed:
    error: Exception


class Dialer:
    def __init__(self, on_done: Callable[[], None], clock: Callable[[], float],
                 retry: float, expected: tuple[type[Exception], ...]) -> None:
        self._on_done = on_done
        self._clock = clock
        self._retry = retry
        self._expected = expected
        self._lock = threading.Lock()
        self._running: set[Hashable] = set()
        self._done: dict[Hashable, object] = {}
        self._failed_at: dict[Hashable, float] = {}

    def want(self, key: Hashable, attempt: Callable[[], object]) -> None:
        """Start ``attempt`` for ``key`` unless one runs, has a result waiting, or failed lately."""
        with self._lock:
            if key in self._running or key in self._done:
                return
            failed = self._failed_at.get(key)
            if failed is not None and self._clock() - failed < self._retry:
                return
            self._running.add(key)
        threading.Thread(target=self._run, args=(key, attempt), name=f"dial:{key}",
                         daemon=True).start()

    def take(self, key: Hashable) -> object | None:
        """The finished attempt's result (or ``Failed``), once; None while nothing is done."""
        with self._lock:
            return self._done.pop(key, None)

    def _run(self, key: Hashable, attempt: Callable[[], object]) -> None:
        result: object = None
        try:
            result = attempt()
        except self._expected as exc:
            result = Failed(exc)
        finally:
            with self._lock:
                self._running.discard(key)
                if isinstance(result, Failed):
                    self._failed_at[key] = self._clock()
                if result is not None:
                    self._done[key] = result
        self._on_done()
