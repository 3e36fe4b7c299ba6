"""Threads that repeat a body until stopped, as a context manager: the shape every simulated client in
the demo, the benchmarks and the e2e tests shares (one place to start, stop and join them)."""

from __future__ import annotations

import threading
from typing import Self


class Background:
    """Runs `self._run(worker)` in `threads` daemon threads; the body loops while `self.running`.

    `stop()` (or leaving the `with` block) sets the flag and joins every thread for at most `join_s`.
    """

    join_s = 15.0

    def __init__(self, threads: int = 1) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    @property
    def running(self) -> bool:
        return not self._stop.is_set()

    def _run(self, worker: int) -> None:
        raise NotImplementedError

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.join_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
