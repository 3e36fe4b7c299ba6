"""The envelope every Flywheel event carries.

`schema` names the event type and its major version (`flywheel.alias-changed/v1`). Consumers accept
unknown fields (forward compatibility within a major version) and refuse an unknown major version loudly
instead of guessing what it means.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

_SCHEMA_RE = re.compile(r"^(?P<name>flywheel\.[a-z0-9.-]+)/v(?P<major>\d+)(?:\.(?P<minor>\d+))?$")


def parse_schema_id(schema: str) -> tuple[str, int]:
    """Split `flywheel.alias-changed/v1` into (`flywheel.alias-changed`, 1); ValueError when malformed."""
    match = _SCHEMA_RE.match(schema)
    if match is None:
        raise ValueError(f"malformed schema id {schema!r}; expected 'flywheel.<name>/v<major>'")
    return match.group("name"), int(match.group("major"))


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    """Base of all events: the envelope fields plus helpers shared by every event type."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    SCHEMA_NAME: ClassVar[str] = ""
    SCHEMA_MAJOR: ClassVar[int] = 1

    schema_id: str = Field(alias="schema", description="Event type and major version.")
    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=128)
    occurred_at: datetime = Field(default_factory=utc_now, description="RFC 3339 timestamp in UTC.")
    producer: str = Field(min_length=1, max_length=200, description="Service that emitted the event.")

    @classmethod
    def schema_id_value(cls) -> str:
        return f"{cls.SCHEMA_NAME}/v{cls.SCHEMA_MAJOR}"

    def to_json_dict(self) -> dict[str, object]:
        """The wire form: aliases (`schema`) and JSON types."""
        return self.model_dump(mode="json", by_alias=True)

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must carry a timezone (RFC 3339)")
        return value.astimezone(UTC)

    @field_serializer("occurred_at")
    def _rfc3339(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def schema_field(name: str, major: int = 1) -> str:
    """The `schema` envelope field of one event type: defaulted, and validated to its name/major."""
    return Field(
        default=f"{name}/v{major}",
        alias="schema",
        pattern=rf"^{re.escape(name)}/v{major}(\.\d+)?$",
        description=f"Event type and version: '{name}/v{major}' (minor versions are compatible).",
    )
