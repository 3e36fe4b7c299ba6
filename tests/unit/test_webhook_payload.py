from __future__ import annotations

import pytest

from services.registry_watcher.domain.alias_diff import diff_aliases
from services.registry_watcher.domain.webhook import (
    AliasObservation,
    IgnoredEvent,
    PayloadError,
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
