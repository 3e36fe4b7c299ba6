"""MLflow webhook payloads -> alias observations.

MLflow sends `{"entity", "action", "timestamp", "data"}`. Alias events are
`model_version_alias.created` (also for a *move*: only the new version is sent) and
`model_version_alias.deleted` (no version). Every other registry event is acknowledged but not
published: the previous version of a moved alias comes from Flywheel's own alias state, not from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ALIAS_ENTITY = "model_version_alias"


class WebhookEnvelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    entity: str = Field(min_length=1, max_length=100)
    action: str = Field(min_length=1, max_length=100)
    timestamp: str | None = None
    data: dict[str, Any]


class AliasCreatedData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=256)
    alias: str = Field(min_length=1, max_length=256)
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
        if not value.isdigit():
            raise ValueError("version must be a positive integer")
        return value


class AliasDeletedData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=256)
    alias: str = Field(min_length=1, max_length=256)


@dataclass(frozen=True)
class AliasObservation:
    """The registry says: `alias` of `model` points to `version` now (None: the alias is gone)."""

    model: str
    alias: str
    version: str | None


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


def parse_payload(document: Any) -> AliasObservation | IgnoredEvent:
    """Interpret a decoded JSON body; raises `PayloadError` naming the field that is wrong."""
    if not isinstance(document, dict):
        raise PayloadError("body", "must be a JSON object")
    try:
        envelope = WebhookEnvelope.model_validate(document)
    except ValidationError as exc:
        raise _first_error(exc, "") from None
    if envelope.entity != ALIAS_ENTITY:
        return IgnoredEvent(f"{envelope.entity}.{envelope.action}")
    if envelope.action == "created":
        try:
            created = AliasCreatedData.model_validate(envelope.data)
        except ValidationError as exc:
            raise _first_error(exc, "data.") from None
        return AliasObservation(created.name, created.alias, created.version)
    if envelope.action == "deleted":
        try:
            deleted = AliasDeletedData.model_validate(envelope.data)
        except ValidationError as exc:
            raise _first_error(exc, "data.") from None
        return AliasObservation(deleted.name, deleted.alias, None)
    return IgnoredEvent(f"{envelope.entity}.{envelope.action}")
