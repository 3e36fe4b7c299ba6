"""Events for tests that only care about a few of their fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from events import AliasAction, AliasChanged, AliasSource


def alias_changed(model: str, alias: str, version: str | None, at: datetime, **fields: Any) -> AliasChanged:
    """`alias` of `model` set to `version` (None: deleted) at `at`; `fields` override the rest."""
    return AliasChanged(
        **{
            "producer": "tests",
            "model": model,
            "alias": alias,
            "version": version,
            "action": AliasAction.SET if version is not None else AliasAction.DELETED,
            "source": AliasSource.WEBHOOK,
            "registry_uri": "http://mlflow.test",
            "occurred_at": at,
            **fields,
        }
    )
