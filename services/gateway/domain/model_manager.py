"""The gateway's in-process model cache: one loaded object per `ModelRef`, shared by every request.

Loading a model is slow I/O (download + deserialize), so the cache exists to pay that cost once per
reference, and its rules follow from that:
- single-flight: concurrent requests for a reference that is not loaded yet share one loader call;
  a failed load is handed to every waiter and never cached, so the next request retries;
- loads run outside the lock, so a slow load of one model never delays hits on the others;
- TTL bounds how long an alias reference may serve a stale resolution when no reload notice arrives;
- the size bound with LRU eviction keeps memory flat when many versions are requested.

The loader is injected (`Callable[[ModelRef], T]`), which keeps this module free of MLflow and lets the
unit tests drive it with a fake loader and a fake clock.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Generic, TypeVar

from services.shared.stages import StageAliases, normalize_stage

T = TypeVar("T")

StageToAlias = Callable[[str], str | None] | Mapping[str, str | None]


@dataclass(frozen=True)
class ModelRef:
    """What the registry can load: a model by exact version or by alias. Also the cache key."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model name must not be empty")
        if (self.version is None) == (self.alias is None):
            raise ValueError(f"exactly one of version or alias must be set for model {self.name!r}")

    @property
    def uri(self) -> str:
        """The `models:/` URI MLflow loads from."""
        if self.version is not None:
            return f"models:/{self.name}/{self.version}"
        return f"models:/{self.name}@{self.alias}"


@dataclass(frozen=True)
class CacheStats:
    """A consistent snapshot of the counters (taken under the lock). `load_seconds` is the total."""

    hits: int
    misses: int
    loads: int
    load_failures: int
    load_seconds: float
    evictions: int
    expirations: int
    size: int
    max_size: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The counters of `CacheStats` (the rest describe the cache's size).
COUNTERS = tuple(f.name for f in fields(CacheStats) if f.name not in ("size", "max_size"))


@dataclass
class _Entry(Generic[T]):
    model: T
    loaded_at: float


@dataclass
class _Flight(Generic[T]):
    """A load in progress. `superseded` is set when an invalidation or a `put` for the same reference
    happens meanwhile: the result still goes to its waiters but is not cached, because it may be stale."""

    future: Future[T] = field(default_factory=Future)
    superseded: bool = False


class ModelManager(Generic[T]):
    """Thread-safe cache of loaded models keyed by `ModelRef` (see the module docstring for the rules)."""

    def __init__(
        self,
        loader: Callable[[ModelRef], T],
        *,
        ttl_s: float | None = None,
        max_size: int = 16,
        clock: Callable[[], float] = time.monotonic,
        stage_to_alias: StageToAlias | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0 or None (never expire), got {ttl_s}")
        self._loader = loader
        self._ttl_s = ttl_s
        self._max_size = max_size
        self._clock = clock
        self._stage_to_alias: StageToAlias = (
            StageAliases().alias_for if stage_to_alias is None else stage_to_alias
        )
        self._lock = threading.Lock()
        self._entries: OrderedDict[ModelRef, _Entry[T]] = OrderedDict()  # oldest use first
        self._inflight: dict[ModelRef, _Flight[T]] = {}
        self._counts: dict[str, Any] = dict.fromkeys(COUNTERS, 0)  # CacheStats' counters, under the lock

    def load_model(
        self, name: str, version: str | None = None, alias: str | None = None, stage: str | None = None
    ) -> T:
        """The model for exactly one of `version`, `alias` or (deprecated) `stage`, loading it on a miss.

        A stage is translated to its alias (Production -> champion, Staging -> challenger by default);
        stages without an alias (Archived, None) cannot be served and raise ValueError.
        """
        if sum(arg is not None for arg in (version, alias, stage)) != 1:
            raise ValueError(f"load_model({name!r}) needs exactly one of version, alias or stage")
        if stage is not None:
            warnings.warn(
                "loading by stage is deprecated: stages map to aliases (Production -> champion, "
                "Staging -> challenger); pass alias= instead",
                DeprecationWarning,
                stacklevel=2,
            )
            alias = self._alias_for_stage(stage)
        return self.load(ModelRef(name, version=version, alias=alias))

    def load(self, ref: ModelRef) -> T:
        """The cached model for `ref`, or the result of the (shared) load of it."""
        with self._lock:
            entry = self._live_entry(ref)
            if entry is not None:
                self._entries.move_to_end(ref)
                self._counts["hits"] += 1
                return entry.model
            self._counts["misses"] += 1
            flight = self._inflight.get(ref)
            if flight is not None:
                leader = False
            else:
                leader = True
                flight = self._inflight[ref] = _Flight()
        if not leader:
            return flight.future.result()
        return self._run_load(ref, flight)

    def put(self, ref: ModelRef, model: T) -> None:
        """Cache an already-loaded model (the gateway preloads the new version, then swaps it in).

        An explicit put wins over a load of the same reference that is still in flight."""
        with self._lock:
            self._supersede(lambda r: r == ref)
            self._store(ref, model)

    def get_if_loaded(self, ref: ModelRef) -> T | None:
        """The cached model or None, without loading. A peek: no hit/miss counted, recency unchanged."""
        with self._lock:
            entry = self._live_entry(ref)
            return None if entry is None else entry.model

    def invalidate_cache(self, name: str) -> int:
        """Drop every cached reference of model `name` (e.g. after an alias moved); returns how many.

        Loads of that model still in flight are not cached when they finish, since they may predate
        the change; the next request loads afresh."""
        with self._lock:
            self._supersede(lambda r: r.name == name)
            dropped = [ref for ref in self._entries if ref.name == name]
            for ref in dropped:
                del self._entries[ref]
            return len(dropped)

    def invalidate_all(self) -> int:
        """Drop every cached model; returns how many. In-flight loads are not cached either."""
        with self._lock:
            self._supersede(lambda r: True)
            count = len(self._entries)
            self._entries.clear()
            return count

    def get_cache_stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**self._counts, size=len(self._entries), max_size=self._max_size)

    def _alias_for_stage(self, stage: str) -> str:
        normalized = normalize_stage(stage)
        if isinstance(self._stage_to_alias, Mapping):
            alias = self._stage_to_alias.get(normalized)
        else:
            alias = self._stage_to_alias(normalized)
        if alias is None:
            raise ValueError(f"stage {stage!r} maps to no alias, so there is no model to serve for it")
        return alias

    def _run_load(self, ref: ModelRef, flight: _Flight[T]) -> T:
        """Call the loader without holding the lock, then publish the outcome to the waiters."""
        started = self._clock()
        try:
            model = self._loader(ref)
        except BaseException as exc:  # waiters must be released whatever happened
            with self._lock:
                self._counts["load_failures"] += 1
                self._counts["load_seconds"] += self._clock() - started
                self._end_flight(ref, flight)
            flight.future.set_exception(exc)
            raise
        with self._lock:
            self._counts["loads"] += 1
            self._counts["load_seconds"] += self._clock() - started
            self._end_flight(ref, flight)
            if not flight.superseded:
                self._store(ref, model)
        flight.future.set_result(model)
        return model

    # The helpers below expect the lock to be held.

    def _live_entry(self, ref: ModelRef) -> _Entry[T] | None:
        """The entry for `ref` unless it is absent or expired (an expired entry is dropped)."""
        entry = self._entries.get(ref)
        if entry is None:
            return None
        if self._ttl_s is not None and self._clock() - entry.loaded_at > self._ttl_s:
            del self._entries[ref]
            self._counts["expirations"] += 1
            return None
        return entry

    def _store(self, ref: ModelRef, model: T) -> None:
        self._entries[ref] = _Entry(model, self._clock())
        self._entries.move_to_end(ref)
        while len(self._entries) > self._max_size:
            self._entries.popitem(last=False)
            self._counts["evictions"] += 1

    def _supersede(self, matches: Callable[[ModelRef], bool]) -> None:
        """Detach matching in-flight loads: their results are not cached and new requests start anew."""
        for ref in [r for r in self._inflight if matches(r)]:
            self._inflight.pop(ref).superseded = True

    def _end_flight(self, ref: ModelRef, flight: _Flight[T]) -> None:
        if self._inflight.get(ref) is flight:
            del self._inflight[ref]
