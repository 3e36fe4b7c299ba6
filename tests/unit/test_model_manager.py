"""Unit tests of the gateway's ModelManager with a fake loader and a fake clock (no MLflow, no network)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from services.gateway.domain.model_manager import ModelManager, ModelRef


@dataclass(eq=False)
class Loaded:
    """A fake model; identity (`is`) tells which load produced it."""

    ref: ModelRef
    n: int


class FakeLoader:
    """Records its calls; `hook` runs inside the load (to sleep, block, advance the clock or fail)."""

    def __init__(self, hook: Callable[[ModelRef], None] | None = None) -> None:
        self.calls: list[ModelRef] = []
        self.hook = hook
        self._lock = threading.Lock()

    def __call__(self, ref: ModelRef) -> Loaded:
        with self._lock:
            self.calls.append(ref)
            n = len(self.calls)
        if self.hook is not None:
            self.hook(ref)
        return Loaded(ref, n)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


# --- ModelRef -------------------------------------------------------------------------------------


def test_uri_by_version_and_by_alias() -> None:
    assert ModelRef("fraud", version="3").uri == "models:/fraud/3"
    assert ModelRef("fraud", alias="champion").uri == "models:/fraud@champion"


@pytest.mark.parametrize("kwargs", [{}, {"version": "3", "alias": "champion"}], ids=["neither", "both"])
def test_ref_needs_exactly_one_of_version_or_alias(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="exactly one of version or alias"):
        ModelRef("fraud", **kwargs)


def test_ref_needs_a_name() -> None:
    with pytest.raises(ValueError, match="name"):
        ModelRef("", version="1")


def test_refs_are_value_keys() -> None:
    assert ModelRef("m", version="1") == ModelRef("m", version="1")
    assert len({ModelRef("m", version="1"), ModelRef("m", version="1"), ModelRef("m", alias="1")}) == 2


# --- load_model -----------------------------------------------------------------------------------


def test_load_by_version_and_by_alias_call_the_loader_with_the_ref() -> None:
    loader = FakeLoader()
    manager = ModelManager(loader)
    by_version = manager.load_model("fraud", version="3")
    by_alias = manager.load_model("fraud", alias="champion")
    assert loader.calls == [ModelRef("fraud", version="3"), ModelRef("fraud", alias="champion")]
    assert by_version.ref.uri == "models:/fraud/3"
    assert by_alias.ref.uri == "models:/fraud@champion"


@pytest.mark.parametrize(
    ("stage", "alias"), [("Production", "champion"), ("Staging", "challenger"), ("production", "champion")]
)
def test_load_by_stage_maps_to_alias_and_warns(stage: str, alias: str) -> None:
    loader = FakeLoader()
    manager = ModelManager(loader)
    with pytest.warns(DeprecationWarning, match="stage is deprecated") as record:
        model = manager.load_model("fraud", stage=stage)
    assert loader.calls == [ModelRef("fraud", alias=alias)]
    assert record[0].filename == __file__  # stacklevel=2: the warning points at the caller
    # same cache entry as loading by the alias directly
    assert manager.load_model("fraud", alias=alias) is model
    assert len(loader.calls) == 1


@pytest.mark.parametrize("stage", ["Archived", "None"])
def test_stage_without_alias_is_an_error_naming_the_stage(stage: str) -> None:
    loader = FakeLoader()
    manager = ModelManager(loader)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=f"'{stage}'"):
        manager.load_model("fraud", stage=stage)
    assert loader.calls == []


def test_unknown_stage_is_an_error() -> None:
    manager = ModelManager(FakeLoader())
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="unknown stage"):
        manager.load_model("fraud", stage="Prod")


def test_stage_to_alias_mapping_and_callable() -> None:
    loader = FakeLoader()
    by_mapping = ModelManager(loader, stage_to_alias={"Production": "prod", "Staging": "canary"})
    by_callable = ModelManager(loader, stage_to_alias=lambda stage: f"{stage.lower()}-alias")
    with pytest.warns(DeprecationWarning):
        by_mapping.load_model("m", stage="production")
        by_mapping.load_model("m", stage="Staging")
        by_callable.load_model("m", stage="Archived")
    assert [ref.alias for ref in loader.calls] == ["prod", "canary", "archived-alias"]


def test_empty_stage_mapping_maps_nothing() -> None:
    manager = ModelManager(FakeLoader(), stage_to_alias={})
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="no alias"):
        manager.load_model("m", stage="Production")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"version": "1", "alias": "champion"},
        {"version": "1", "stage": "Production"},
        {"alias": "champion", "stage": "Production"},
    ],
    ids=["none", "version+alias", "version+stage", "alias+stage"],
)
def test_load_model_needs_exactly_one_selector(kwargs: dict[str, str]) -> None:
    loader = FakeLoader()
    with pytest.raises(ValueError, match="exactly one of version, alias or stage"):
        ModelManager(loader).load_model("m", **kwargs)
    assert loader.calls == []


@pytest.mark.parametrize("kwargs", [{"max_size": 0}, {"ttl_s": 0}, {"ttl_s": -1.0}])
def test_constructor_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ModelManager(FakeLoader(), **kwargs)  # type: ignore[arg-type]


# --- stats ----------------------------------------------------------------------------------------


def test_hits_and_misses_are_counted() -> None:
    loader = FakeLoader()
    manager = ModelManager(loader, max_size=4, clock=FakeClock())
    first = manager.load_model("a", version="1")
    assert manager.load_model("a", version="1") is first
    assert manager.load_model("a", version="1") is first
    manager.load_model("b", alias="champion")
    stats = manager.get_cache_stats()
    assert (stats.hits, stats.misses, stats.loads, stats.load_failures) == (2, 2, 2, 0)
    assert stats.load_seconds == 0.0
    assert (stats.evictions, stats.expirations, stats.size, stats.max_size) == (0, 0, 2, 4)
    assert len(loader.calls) == 2


def test_load_seconds_measured_with_the_clock_and_as_dict() -> None:
    clock = FakeClock()

    def slow(ref: ModelRef) -> None:
        clock.now += 2.5

    manager = ModelManager(FakeLoader(slow), clock=clock)
    manager.load_model("a", version="1")
    manager.load_model("b", version="1")
    stats = manager.get_cache_stats().as_dict()
    assert stats["load_seconds"] == pytest.approx(5.0)
    assert stats["loads"] == 2
    assert set(stats) == {
        "hits",
        "misses",
        "loads",
        "load_failures",
        "load_seconds",
        "evictions",
        "expirations",
        "size",
        "max_size",
    }


# --- single-flight --------------------------------------------------------------------------------


def test_single_flight_100_threads_one_load() -> None:
    n = 100
    loader = FakeLoader(lambda ref: time.sleep(0.05))
    manager = ModelManager(loader)
    barrier = threading.Barrier(n)

    def request() -> Loaded:
        barrier.wait()
        return manager.load_model("fraud", alias="champion")

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = [f.result(timeout=10) for f in [pool.submit(request) for _ in range(n)]]

    assert len(loader.calls) == 1
    assert all(r is results[0] for r in results)
    stats = manager.get_cache_stats()
    assert stats.loads == 1
    assert stats.hits + stats.misses == n
    assert stats.size == 1


def test_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    n = 20
    release = threading.Event()
    fail = True

    class LoadError(RuntimeError):
        pass

    def hook(ref: ModelRef) -> None:
        release.wait(timeout=5)
        if fail:
            raise LoadError("artifact store down")

    loader = FakeLoader(hook)
    manager = ModelManager(loader)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(manager.load_model, "fraud", version="7") for _ in range(n)]
        # every request has missed (and so joined the one load) before the load is allowed to fail
        wait_until(lambda: manager.get_cache_stats().misses == n)
        release.set()
        errors = [f.exception(timeout=10) for f in futures]

    assert all(isinstance(e, LoadError) for e in errors)
    assert len(loader.calls) == 1
    stats = manager.get_cache_stats()
    assert (stats.loads, stats.load_failures, stats.size) == (0, 1, 0)
    assert manager.get_if_loaded(ModelRef("fraud", version="7")) is None

    fail = False  # the next request tries again
    model = manager.load_model("fraud", version="7")
    assert len(loader.calls) == 2
    assert manager.load_model("fraud", version="7") is model


def test_invalidate_during_a_load_keeps_its_result_out_of_the_cache() -> None:
    entered, release = threading.Event(), threading.Event()

    def hook(ref: ModelRef) -> None:
        if len(loader.calls) == 1:
            entered.set()
            release.wait(timeout=5)

    loader = FakeLoader(hook)
    manager = ModelManager(loader)
    with ThreadPoolExecutor(max_workers=1) as pool:
        stale = pool.submit(manager.load_model, "fraud", alias="champion")
        assert entered.wait(timeout=5)
        assert manager.invalidate_cache("fraud") == 0  # nothing cached yet, but the load is superseded
        release.set()
        stale_model = stale.result(timeout=5)

    assert manager.get_if_loaded(ModelRef("fraud", alias="champion")) is None
    fresh = manager.load_model("fraud", alias="champion")
    assert fresh is not stale_model
    assert len(loader.calls) == 2


def test_put_during_a_load_wins() -> None:
    entered, release = threading.Event(), threading.Event()

    def hook(ref: ModelRef) -> None:
        entered.set()
        release.wait(timeout=5)

    manager = ModelManager(FakeLoader(hook))
    ref = ModelRef("fraud", alias="champion")
    swapped = Loaded(ref, -1)
    with ThreadPoolExecutor(max_workers=1) as pool:
        loading = pool.submit(manager.load, ref)
        assert entered.wait(timeout=5)
        manager.put(ref, swapped)
        release.set()
        assert loading.result(timeout=5) is not swapped
    assert manager.get_if_loaded(ref) is swapped


# --- TTL ------------------------------------------------------------------------------------------


def test_ttl_expiry_reloads_with_fake_clock() -> None:
    clock = FakeClock()
    loader = FakeLoader()
    manager = ModelManager(loader, ttl_s=10, clock=clock)
    first = manager.load_model("fraud", alias="champion")

    clock.now = 10.0  # not older than ttl yet
    assert manager.load_model("fraud", alias="champion") is first

    clock.now = 10.5
    second = manager.load_model("fraud", alias="champion")
    assert second is not first
    assert len(loader.calls) == 2
    stats = manager.get_cache_stats()
    assert (stats.expirations, stats.hits, stats.misses) == (1, 1, 2)

    clock.now = 15.0  # the reload restarted the entry's age
    assert manager.load_model("fraud", alias="champion") is second


def test_expired_entry_is_not_returned_by_get_if_loaded() -> None:
    clock = FakeClock()
    manager = ModelManager(FakeLoader(), ttl_s=1, clock=clock)
    manager.load_model("m", version="1")
    clock.now = 2.0
    assert manager.get_if_loaded(ModelRef("m", version="1")) is None
    assert manager.get_cache_stats().size == 0


def test_no_ttl_never_expires() -> None:
    clock = FakeClock()
    loader = FakeLoader()
    manager = ModelManager(loader, clock=clock)
    first = manager.load_model("m", version="1")
    clock.now = 1e9
    assert manager.load_model("m", version="1") is first
    assert len(loader.calls) == 1


# --- LRU ------------------------------------------------------------------------------------------


def test_lru_eviction_order_access_refreshes_recency() -> None:
    loader = FakeLoader()
    manager = ModelManager(loader, max_size=2)
    a, b, c = (ModelRef(name, version="1") for name in "abc")
    manager.load(a)
    manager.load(b)
    manager.load(a)  # a is now the most recently used: b goes first
    manager.load(c)
    assert manager.get_if_loaded(b) is None
    assert manager.get_if_loaded(a) is not None
    assert manager.get_if_loaded(c) is not None
    stats = manager.get_cache_stats()
    assert (stats.evictions, stats.size) == (1, 2)

    manager.load(b)  # reloading b evicts a (least recently used of a, c)
    assert manager.get_if_loaded(a) is None
    assert manager.get_if_loaded(c) is not None
    assert [ref.name for ref in loader.calls] == ["a", "b", "c", "b"]


def test_max_size_one() -> None:
    manager = ModelManager(FakeLoader(), max_size=1)
    manager.load_model("a", version="1")
    manager.load_model("b", version="1")
    assert manager.get_cache_stats().size == 1
    assert manager.get_if_loaded(ModelRef("b", version="1")) is not None


# --- invalidation, put, get_if_loaded -------------------------------------------------------------


def test_invalidate_cache_drops_only_that_model() -> None:
    loader = FakeLoader()
    manager = ModelManager(loader)
    manager.load_model("fraud", version="1")
    manager.load_model("fraud", alias="champion")
    other = manager.load_model("churn", alias="champion")

    assert manager.invalidate_cache("fraud") == 2
    assert manager.invalidate_cache("fraud") == 0
    assert manager.invalidate_cache("unknown") == 0
    assert manager.get_if_loaded(ModelRef("fraud", version="1")) is None
    assert manager.get_if_loaded(ModelRef("fraud", alias="champion")) is None
    assert manager.load_model("churn", alias="champion") is other
    manager.load_model("fraud", alias="champion")
    assert len(loader.calls) == 4


def test_invalidate_all() -> None:
    loader = FakeLoader()
    manager = ModelManager(loader)
    for name in ("a", "b", "c"):
        manager.load_model(name, version="1")
    assert manager.invalidate_all() == 3
    assert manager.get_cache_stats().size == 0
    assert manager.invalidate_all() == 0
    manager.load_model("a", version="1")
    assert len(loader.calls) == 4


def test_put_and_get_if_loaded() -> None:
    loader = FakeLoader()
    manager = ModelManager(loader)
    ref = ModelRef("fraud", alias="champion")

    assert manager.get_if_loaded(ref) is None  # a peek never loads
    preloaded = Loaded(ref, 0)
    manager.put(ref, preloaded)
    assert manager.get_if_loaded(ref) is preloaded
    assert manager.load_model("fraud", alias="champion") is preloaded
    assert loader.calls == []

    replacement = Loaded(ref, 1)
    manager.put(ref, replacement)  # the swap replaces the entry
    assert manager.load(ref) is replacement
    stats = manager.get_cache_stats()
    assert (stats.hits, stats.misses, stats.loads, stats.size) == (2, 0, 0, 1)  # peeks not counted


def test_put_respects_max_size() -> None:
    manager: ModelManager[Loaded] = ModelManager(FakeLoader(), max_size=2)
    refs = [ModelRef("m", version=str(v)) for v in range(3)]
    for ref in refs:
        manager.put(ref, Loaded(ref, 0))
    assert manager.get_if_loaded(refs[0]) is None
    assert manager.get_cache_stats().evictions == 1


def test_get_if_loaded_does_not_refresh_recency() -> None:
    manager = ModelManager(FakeLoader(), max_size=2)
    a, b, c = (ModelRef(name, version="1") for name in "abc")
    manager.load(a)
    manager.load(b)
    assert manager.get_if_loaded(a) is not None
    manager.load(c)
    assert manager.get_if_loaded(a) is None
    assert manager.get_if_loaded(b) is not None


# --- concurrency across models --------------------------------------------------------------------


def test_slow_load_of_a_does_not_block_other_models() -> None:
    a_entered, a_release, a_done = threading.Event(), threading.Event(), threading.Event()

    def hook(ref: ModelRef) -> None:
        if ref.name == "a":
            a_entered.set()
            a_release.wait(timeout=5)

    loader = FakeLoader(hook)
    manager = ModelManager(loader)
    b = manager.load_model("b", version="1")

    def load_a() -> Loaded:
        try:
            return manager.load_model("a", version="1")
        finally:
            a_done.set()

    with ThreadPoolExecutor(max_workers=1) as pool:
        future_a = pool.submit(load_a)
        assert a_entered.wait(timeout=5)
        # while A's loader is blocked: a hit on B, a fresh load of C and the stats all answer
        assert manager.load_model("b", version="1") is b
        manager.load_model("c", version="1")
        assert manager.get_cache_stats().hits == 1
        assert not a_done.is_set()
        a_release.set()
        assert future_a.result(timeout=5).ref == ModelRef("a", version="1")
    assert manager.get_cache_stats().size == 3
