"""Which loaded version each alias of each model serves right now, swapped atomically.

A request reads its `LoadedModel` once, at the start, and keeps that reference: a swap during the
request changes what the *next* request gets, while the one in flight finishes on the version it
started with. A swap only ever installs a fully loaded model (the preload happened before).
"""

from __future__ import annotations

import threading
import time

from services.gateway.adapters.model_loader import LoadedModel


class ServingTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serving: dict[tuple[str, str], LoadedModel] = {}
        self._swapped_at: dict[tuple[str, str], float] = {}

    def get(self, model: str, alias: str) -> LoadedModel | None:
        return self._serving.get((model, alias))

    def swap(self, model: str, alias: str, loaded: LoadedModel) -> LoadedModel | None:
        """Point `model@alias` at `loaded`; returns what it pointed to before."""
        with self._lock:
            previous = self._serving.get((model, alias))
            self._serving[(model, alias)] = loaded
            self._swapped_at[(model, alias)] = time.time()
            return previous

    def drop(self, model: str, alias: str) -> LoadedModel | None:
        with self._lock:
            self._swapped_at.pop((model, alias), None)
            return self._serving.pop((model, alias), None)

    def aliases(self, model: str) -> dict[str, str]:
        """alias -> version currently served for `model`."""
        with self._lock:
            return {a: m.version for (name, a), m in self._serving.items() if name == model}

    def swapped_at(self, model: str) -> dict[str, float]:
        """alias -> wall-clock time (s) of its last swap: when the replica began serving that version."""
        with self._lock:
            return {a: t for (name, a), t in self._swapped_at.items() if name == model}

    def serving_since(self) -> list[tuple[str, str, str, float | None]]:
        """(model, alias, version, time of its swap or None), sorted, read under one lock so each version
        is paired with its own swap time."""
        with self._lock:
            return sorted(
                (name, alias, loaded.version, self._swapped_at.get((name, alias)))
                for (name, alias), loaded in self._serving.items()
            )

    def served(self) -> dict[str, dict[str, str]]:
        with self._lock:
            result: dict[str, dict[str, str]] = {}
            for (name, alias), loaded in self._serving.items():
                result.setdefault(name, {})[alias] = loaded.version
            return result
