"""Training examples from feedback: what the model should have answered for a given input.

The rules, inherited from the DataExporter users know:
- an example's output is the user's `corrected_output` when given, else the original output of a
  thumbs-up prediction; a thumbs-down without a correction says what was wrong, not what is right, so
  it yields no example;
- one example per request: among all feedback on a request, a correction beats any plain rating, and
  otherwise the latest feedback (by `(occurred_at, event_id)`) wins; if the winner is a plain thumbs-down
  the request yields nothing (the latest word on the plain output was "wrong");
- filters (model, time range on the feedback time) apply before that choice;
- order: corrected examples first (the strongest signal, and what a truncated read should get), then by
  feedback time, then request id, so the same feedback always gives the same rows (and file hashes).

Inputs and original outputs come from the feedback event; when it lacks them they are taken from the
InferenceRecorded of the same request, if the caller has it. Rows keep them as JSON values; the dataset
writer stores them as JSON text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import JsonValue

from events import FeedbackRating, FeedbackRecorded, InferenceRecorded
from services.shared.jsontext import epoch_us

Source = Literal["corrected", "thumbs_up"]


@dataclass(frozen=True, slots=True)
class ExampleRow:
    """One training example; field order is the column order of every dataset file."""

    request_id: str
    model: str
    version: str
    inputs: JsonValue
    output: JsonValue
    source: Source
    rating: str
    user_id: str | None
    feedback_at: datetime
    served_at: datetime | None
    trace_id: str | None


COLUMNS: tuple[str, ...] = tuple(ExampleRow.__slots__)


@dataclass
class ExampleBuild:
    """The examples, plus how many feedback events were left out and why (for logs and the manifest)."""

    rows: list[ExampleRow] = field(default_factory=list)
    excluded: Counter[str] = field(default_factory=Counter)

    @property
    def corrected(self) -> int:
        return sum(1 for row in self.rows if row.source == "corrected")


def _rank(event: FeedbackRecorded) -> tuple[bool, int, str]:
    return (event.corrected_output is not None, epoch_us(event.occurred_at), event.event_id)


def _in_range(at: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or at >= start) and (end is None or at < end)


def build_examples(
    feedback: Iterable[FeedbackRecorded],
    inferences: Mapping[str, InferenceRecorded] | None = None,
    *,
    model: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> ExampleBuild:
    """Examples from `feedback` (any order, duplicates allowed); `inferences` maps request_id -> event.

    `start` is inclusive and `end` exclusive, both compared with the feedback's `occurred_at`.
    """
    result = ExampleBuild()
    winners: dict[str, FeedbackRecorded] = {}
    seen: set[str] = set()
    for event in feedback:
        if model is not None and event.model != model:
            result.excluded["other_model"] += 1
            continue
        if not _in_range(event.occurred_at, start, end):
            result.excluded["out_of_range"] += 1
            continue
        if event.event_id in seen:
            result.excluded["redelivered"] += 1
            continue
        seen.add(event.event_id)
        current = winners.get(event.request_id)
        if current is None or _rank(event) > _rank(current):
            winners[event.request_id] = event
    if len(seen) > len(winners):
        result.excluded["superseded"] = len(seen) - len(winners)
    lookup = inferences or {}
    for event in winners.values():
        row = _row(event, lookup.get(event.request_id), result.excluded)
        if row is not None:
            result.rows.append(row)
    result.rows.sort(key=lambda r: (r.source != "corrected", epoch_us(r.feedback_at), r.request_id))
    return result


def _row(
    event: FeedbackRecorded, inference: InferenceRecorded | None, excluded: Counter[str]
) -> ExampleRow | None:
    inputs = event.inputs if event.inputs is not None else (inference.inputs if inference else None)
    source: Source
    output: JsonValue
    if event.corrected_output is not None:
        source, output = "corrected", event.corrected_output
    elif event.rating == FeedbackRating.THUMBS_UP:
        source = "thumbs_up"
        output = event.outputs if event.outputs is not None else (inference.outputs if inference else None)
    else:
        excluded["thumbs_down"] += 1
        return None
    if inputs is None:
        excluded["missing_inputs"] += 1
        return None
    if output is None:
        excluded["missing_output"] += 1
        return None
    return ExampleRow(
        request_id=event.request_id,
        model=event.model,
        version=event.version,
        inputs=inputs,
        output=output,
        source=source,
        rating=str(event.rating),
        user_id=event.user_id,
        feedback_at=event.occurred_at,
        served_at=_utc(event.served_at or (inference.occurred_at if inference else None)),
        trace_id=event.trace_id or (inference.trace_id if inference else None),
    )


def _utc(value: datetime | None) -> datetime | None:
    """Served times in UTC (a naive one is taken as UTC) so every file spells times the same way."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
