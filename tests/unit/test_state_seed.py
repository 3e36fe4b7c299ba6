"""The watcher's alias state rebuilt from the published alias changes (domain/state_seed.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from events import AliasAction, AliasChanged, AliasSource
from services.registry_watcher.domain.state_seed import SeedEntry, seed_from

T0 = datetime(2026, 12, 8, tzinfo=UTC)


def change(
    model: str, alias: str, version: str | None, second: int, registry: str = "http://mlflow"
) -> AliasChanged:
    return AliasChanged(
        producer="registry-watcher",
        model=model,
        alias=alias,
        version=version,
        action=AliasAction.SET if version else AliasAction.DELETED,
        source=AliasSource.WEBHOOK,
        registry_uri=registry,
        occurred_at=T0 + timedelta(seconds=second),
    )


def test_the_last_published_state_of_each_alias_deletions_kept_with_their_time() -> None:
    events = [
        change("wine", "champion", "1", 1),
        change("wine", "champion", "2", 2),
        change("wine", "challenger", "3", 3),
        change("wine", "challenger", None, 4),
        change("iris", "champion", "7", 5),
    ]
    seed = seed_from(events, watched=lambda m: True, registry_uri="http://mlflow")
    at = lambda s: (T0 + timedelta(seconds=s)).timestamp()  # noqa: E731
    assert seed == {
        "wine": {"champion": SeedEntry("2", at(2)), "challenger": SeedEntry(None, at(4))},
        "iris": {"champion": SeedEntry("7", at(5))},
    }


def test_only_watched_models_of_this_registry() -> None:
    events = [change("wine", "champion", "1", 1), change("iris", "champion", "1", 1, registry="http://other")]
    assert seed_from(events, watched=lambda m: m != "wine", registry_uri="http://mlflow") == {}
    assert list(seed_from(events, watched=lambda m: True, registry_uri="http://other")) == ["iris"]
