"""MLflow webhook payloads -> alias observations.

MLflow sends `{"entity", "action", "timestamp", "data"}`. Alias events are
`model_version_alias.created` (also for a *move*: only the new version is sent) and
`model_version_alias.deleted` (no version). Every other registry event is acknowledged but not
published: the previous version of a moved alias comes from Flywheel's own alias state, not from here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ALIAS_ENTITY = "model_version_alias"


class WebhookEnvelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    entity: str = Field(min_length=1, max_length=100)
    action: str = Field(min_length=1, max_length=100)
    timestamp: str | None = None
    data: dict[str, Any]


def _printable_text(value: str) -> str:
    """Names travel as Kafka keys and Redis keys: valid UTF-8 without control characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text") from None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters")
    return value


class AliasDeletedData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=256)
    alias: str = Field(min_length=1, max_length=256)

    _text = field_validator("name", "alias")(_printable_text)


class AliasCreatedData(AliasDeletedData):
    version: str = Field(min_length=1, max_length=32)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("version")
    @classmethod
    def _numeric(cls, value: str) -> str:
        if not (value.isascii() and value.isdigit()):
            raise ValueError("version must be a positive integer")
        return value


@dataclass(frozen=True)
class AliasObservation:
    """The registry says: `alias` of `model` points to `version` now (None: the alias is gone).

    `observed_at` (epoch seconds, None when unknown) orders observations of one alias: a webhook carries
    the time MLflow built the delivery (kept across its retries), a poll the time just before it read
    the registry. An observation older than the one the alias state holds is stale: a retried delivery
    of a change the state has already moved past must not flip the alias back."""

    model: str
    alias: str
    version: str | None
    observed_at: float | None = None


def delivery_time(timestamp: str | None) -> float | None:
    """The payload's ISO 8601 `timestamp` as epoch seconds; None when missing or unreadable (such a
    delivery is applied without the staleness check rather than refused)."""
    if not timestamp or len(timestamp) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        value = parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class IgnoredEvent:
    """A valid registry event Flywheel does not publish (counted by `kind`)."""

    kind: str


class PayloadError(ValueError):
    """The body is not a usable MLflow webhook payload; `field` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _first_error(exc: ValidationError, prefix: str) -> PayloadError:
    err = exc.errors()[0]
    location = ".".join(str(p) for p in err["loc"])
    return PayloadError(f"{prefix}{location}" if location else prefix.rstrip("."), err["msg"])


_KIND_RE = re.compile(r"^[a-z_]{1,50}$")


def _kind(entity: str, action: str) -> str:
    """Metric label for an ignored event; bounded to MLflow-like names so labels cannot explode."""
    if _KIND_RE.match(entity) and _KIND_RE.match(action):
        return f"{entity}.{action}"
    return "unknown"


def parse_payload(document: Any) -> AliasObservation | IgnoredEvent:
    """Interpret a decoded JSON body; raises `PayloadError` naming the field that is wrong."""
    if not isinstance(document, dict):
        raise PayloadError("body", "must be a JSON object")
    try:
        envelope = WebhookEnvelope.model_validate(document)
    except ValidationError as exc:
        raise _first_error(exc, "") from None
    if envelope.entity != ALIAS_ENTITY:
        return IgnoredEvent(_kind(envelope.entity, envelope.action))
    if envelope.action == "created":
        try:
            created = AliasCreatedData.model_validate(envelope.data)
        except ValidationError as exc:
            raise _first_error(exc, "data.") from None
        return AliasObservation(
            created.name, created.alias, created.version, delivery_time(envelope.timestamp)
        )
    if envelope.action == "deleted":
        try:
            deleted = AliasDeletedData.model_validate(envelope.data)
        except ValidationError as exc:
            raise _first_error(exc, "data.") from None
        return AliasObservation(deleted.name, deleted.alias, None, delivery_time(envelope.timestamp))
    return IgnoredEvent(_kind(envelope.entity, envelope.action))
