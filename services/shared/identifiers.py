"""The formats of the identifiers Flywheel accepts from outside, and safe literals for MLflow filters.

An identifier that reaches an MLflow search filter (`tags.`flywheel.request_id` = '...'`) is pasted
into a query language that has no escaping for quotes, so the only safe input is one whose format is
known: request ids are 32 hex digits, trace ids MLflow's `tr-` + 32 hex digits, versions positive
integers of at most 10 digits (MLflow answers a longer one with a server error its client retries for a
minute and a half). Checked at the HTTP edge (422 naming the field) and again where a filter is built.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Path, Query

REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"
TRACE_ID_PATTERN = r"^tr-[0-9a-f]{32}$"
VERSION_PATTERN = r"^[1-9][0-9]{0,9}$"
ALIAS_PATTERN = r"^[A-Za-z0-9_-]{1,255}$"
# Registered model names: not blank, no control characters (at most 256 characters: `max_length`).
# pydantic's regex engine has no look-around, hence "one non-space between any others".
MODEL_NAME_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
_FILTER_SAFE = re.compile(r"^[A-Za-z0-9._:@+=-]{1,256}$")

ModelName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=256,
        pattern=MODEL_NAME_PATTERN,
        description="Registered model name (not blank, at most 256 characters).",
    ),
]
AliasQuery = Annotated[
    str | None,
    Query(pattern=ALIAS_PATTERN, description="Alias to serve from (default: champion)."),
]
VersionQuery = Annotated[
    str | None,
    Query(
        pattern=VERSION_PATTERN, description="Pin an exact version (a positive integer) instead of an alias."
    ),
]


def filter_literal(value: str) -> str:
    """`value` quoted for an MLflow search filter; ValueError unless it is a plain identifier."""
    if not _FILTER_SAFE.match(value):
        raise ValueError(f"{value[:40]!r} is not an identifier that can be searched for")
    return f"'{value}'"


def is_filter_safe(value: str) -> bool:
    return bool(_FILTER_SAFE.match(value))
