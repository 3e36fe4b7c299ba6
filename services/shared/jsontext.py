"""JSON text and timestamps of dataset files and feedback state: one contract for whoever writes or
reads them (feedback aggregation writes dataset versions, the retrainer reads them back).

One canonical text form matters because dataset files are content-addressed (SHA-256 in the manifest):
the same rows should give the same bytes. orjson is used when importable (it is a dependency of dspy,
hence installed with Flywheel) because it is several times faster than `json`; the fallback writes the
same compact form (no spaces, UTF-8, key order kept) and differs only in rare float spellings (`1e+16`
vs `1e16`). Verification is unaffected either way: a manifest hashes the bytes that were written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is installed with dspy
    _orjson = None  # type: ignore[assignment]


def dumps(value: Any) -> str:
    """Compact JSON text of a JSON-compatible value (orjson when it can, `json` otherwise)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(value).decode("utf-8")
        except TypeError:
            pass  # e.g. integers beyond 64 bits: `json` handles them
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps_many(values: Iterable[Any]) -> list[str]:
    """`dumps` of each value; one loop with the encoder bound locally (it runs once per row and column)."""
    if _orjson is None:
        return [dumps(v) for v in values]
    dump = _orjson.dumps
    out: list[str] = []
    append = out.append
    for value in values:
        try:
            append(dump(value).decode("utf-8"))
        except TypeError:
            append(dumps(value))
    return out


def iso_z(value: datetime) -> str:
    """A datetime as orjson writes it with OPT_UTC_Z: ISO 8601, `Z` for UTC, other offsets kept."""
    return value.isoformat().replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_z(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_records(records: Iterable[Mapping[str, Any]], separator: bytes) -> bytes:
    """UTF-8 JSON of each record, separated by `separator` (no trailing one); datetimes as `iso_z`.

    Appending each record's bytes to one buffer at once matters more than it looks: a list of many
    small orjson results costs ~2 us per row in page faults here, streaming them costs ~0.1 us.
    """
    buf = bytearray()
    if _orjson is not None:
        dump, option = _orjson.dumps, _orjson.OPT_UTC_Z
        for i, record in enumerate(records):
            if i:
                buf += separator
            try:
                buf += dump(record, option=option)
            except TypeError:
                buf += _json_bytes(record)
        return bytes(buf)
    for i, record in enumerate(records):
        if i:
            buf += separator
        buf += _json_bytes(record)
    return bytes(buf)


def _json_bytes(record: Mapping[str, Any]) -> bytes:
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default)
    return text.encode("utf-8")


def loads(text: str | bytes) -> Any:
    """Parse JSON with `json`: orjson reads integers beyond 64 bits as floats, which would change data."""
    return json.loads(text)


def rfc3339(value: datetime) -> str:
    """UTC timestamp as RFC 3339 with `Z` (the envelope's form); naive datetimes are refused."""
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a timezone")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def epoch_us(value: datetime) -> int:
    """Microseconds since the epoch: an exact integer (a float loses microseconds at today's epoch)."""
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a timezone")
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def uses_orjson() -> bool:
    return _orjson is not None
