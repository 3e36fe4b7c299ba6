from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.registry_watcher.adapters.alias_state import AliasSnapshot
from services.registry_watcher.domain.alias_diff import diff_aliases
from services.registry_watcher.domain.webhook import (
    AliasObservation,
    IgnoredEvent,
    PayloadError,
    delivery_time,
    parse_payload,
)


def test_alias_created_is_an_observation_with_version() -> None:
    doc = {
        "entity": "model_version_alias",
        "action": "created",
        "data": {"name": "m", "alias": "champion", "version": "3"},
    }
    assert parse_payload(doc) == AliasObservation("m", "champion", "3")


def test_integer_version_is_accepted_as_text() -> None:
    doc = {
        "entity": "model_version_alias",
        "action": "created",
        "data": {"name": "m", "alias": "a", "version": 7},
    }
    assert parse_payload(doc) == AliasObservation("m", "a", "7")


def test_alias_deleted_has_no_version() -> None:
    doc = {"entity": "model_version_alias", "action": "deleted", "data": {"name": "m", "alias": "champion"}}
    assert parse_payload(doc) == AliasObservation("m", "champion", None)


def test_other_registry_events_are_ignored_by_kind() -> None:
    doc = {"entity": "model_version", "action": "created", "data": {"name": "m", "version": "1"}}
    assert parse_payload(doc) == IgnoredEvent("model_version.created")
    doc = {"entity": "model_version_alias", "action": "renamed", "data": {}}
    assert parse_payload(doc) == IgnoredEvent("model_version_alias.renamed")


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([], "body"),
        ({"action": "created", "data": {}}, "entity"),
        ({"entity": "model_version_alias", "action": "created"}, "data"),
        (
            {"entity": "model_version_alias", "action": "created", "data": {"alias": "a", "version": "1"}},
            "data.name",
        ),
        (
            {"entity": "model_version_alias", "action": "created", "data": {"name": "m", "alias": "a"}},
            "data.version",
        ),
        (
            {
                "entity": "model_version_alias",
                "action": "created",
                "data": {"name": "m", "alias": "a", "version": "x1"},
            },
            "data.version",
        ),
        (
            {"entity": "model_version_alias", "action": "deleted", "data": {"name": "m", "alias": ""}},
            "data.alias",
        ),
        (
            {
                "entity": "model_version_alias",
                "action": "created",
                "data": {"name": "m", "alias": "a", "version": True},
            },
            "data.version",
        ),
    ],
)
def test_malformed_payloads_name_the_field(doc: object, field: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_payload(doc)
    assert info.value.field == field


def test_diff_reports_moves_additions_and_removals_once() -> None:
    stored = {"champion": "1", "challenger": "2", "old": "1"}
    observed = {"champion": "2", "challenger": "2", "new": "3"}
    assert diff_aliases("m", stored, observed) == [
        AliasObservation("m", "champion", "2"),
        AliasObservation("m", "new", "3"),
        AliasObservation("m", "old", None),
    ]
    assert diff_aliases("m", observed, observed) == []


def test_the_delivery_time_orders_observations_and_junk_times_are_ignored() -> None:
    doc = {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2026-11-30T12:00:00.250000+00:00",
        "data": {"name": "m", "alias": "champion", "version": "3"},
    }
    parsed = parse_payload(doc)
    assert isinstance(parsed, AliasObservation)
    assert parsed.observed_at == datetime(2026, 11, 30, 12, 0, 0, 250000, tzinfo=UTC).timestamp()
    assert delivery_time("2026-11-30T12:00:00") == delivery_time("2026-11-30T12:00:00Z")  # naive = UTC
    for junk in (None, "", "yesterday", "9" * 400, "2026-13-01T00:00:00"):
        assert delivery_time(junk) is None


def test_an_observation_older_than_the_states_is_stale() -> None:
    snapshot = AliasSnapshot("m", "3", {"champion": "1"}, {"champion": 100.0})
    assert snapshot.is_stale("champion", 99.5)
    assert not snapshot.is_stale("champion", 100.0)  # same time: decided by the versions as before
    assert not snapshot.is_stale("champion", 101.0)
    assert not snapshot.is_stale("champion", None)  # unknown time: no ordering claim
    assert not snapshot.is_stale("challenger", 1.0)  # never observed
    assert diff_aliases("m", {"champion": "1"}, {"champion": "2"}, 50.0) == [
        AliasObservation("m", "champion", "2", 50.0)
    ]
