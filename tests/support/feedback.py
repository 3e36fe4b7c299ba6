"""Feedback streams for tests: synthetic events with strictly increasing times, the counting rules stated
simply (`Reference`) to compare the worker's counts with, and the feedback-aggregation worker as a
subprocess (`Worker`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from events import Event, FeedbackRating, FeedbackRecorded, InferenceRecorded
from services.shared.jsontext import epoch_us
from services.shared.kafka.publisher import Record
from tests import support
from tests.support import WorkerProcess, unique

WAIT_S = 120.0  # join ~3-5 s; a restart waits for the killed member's session (6 s); a busy 2-core box

UP, DOWN = FeedbackRating.THUMBS_UP, FeedbackRating.THUMBS_DOWN
COUNT_FIELDS = ("inferences", "errors", "feedback", "thumbs_up", "thumbs_down", "corrections")


def wait_until(condition: Callable[[], Any], timeout_s: float = WAIT_S, what: str = "condition") -> Any:
    return support.wait_until(condition, timeout_s, what)


# --- synthetic events and the reference counts ---------------------------------------------------


class Events:
    """Makes events of one model with strictly increasing times (publish order = time order)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.now = datetime.now(UTC)

    def tick(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def inference(self, request_id: str, version: str, *, error: bool = False) -> InferenceRecorded:
        return InferenceRecorded(
            producer="tests",
            model=self.model,
            version=version,
            request_id=request_id,
            replica="r1",
            status="error" if error else "ok",
            error_type="ValueError" if error else None,
            latency_ms=2.5,
            inputs={"alcohol": 13.0, "request": request_id},
            outputs=None if error else [1],
            occurred_at=self.tick(),
        )

    def feedback(
        self,
        request_id: str,
        version: str,
        user: str | None,
        rating: FeedbackRating,
        corrected: Any = None,
        *,
        at: datetime | None = None,
    ) -> FeedbackRecorded:
        return FeedbackRecorded(
            producer="tests",
            feedback_id=unique("fb"),
            model=self.model,
            version=version,
            request_id=request_id,
            rating=rating,
            corrected_output=corrected,
            user_id=user,
            inputs={"alcohol": 13.0, "request": request_id},
            outputs=[1],
            occurred_at=at or self.tick(),
        )


@dataclass
class Reference:
    """The counting rules, stated simply: applied in publish order (one partition, in order)."""

    inferences: dict[tuple[str, str], InferenceRecorded] = field(default_factory=dict)
    votes: dict[tuple[str, str, str], FeedbackRecorded] = field(default_factory=dict)
    duplicates: Counter[str] = field(default_factory=Counter)

    def add(self, event: Event) -> None:
        if isinstance(event, InferenceRecorded):
            key = (event.version, event.request_id)
            if key in self.inferences:
                self.duplicates[event.version] += 1
            else:
                self.inferences[key] = event
        elif isinstance(event, FeedbackRecorded):
            vkey = (event.version, event.request_id, event.user_id or "")
            old = self.votes.get(vkey)
            order = (epoch_us(event.occurred_at), event.event_id)
            if old is not None and order <= (epoch_us(old.occurred_at), old.event_id):
                self.duplicates[event.version] += 1
            else:
                self.votes[vkey] = event

    def counts(self, version: str | None = None) -> dict[str, int]:
        inf = [e for (v, _), e in self.inferences.items() if version in (None, v)]
        votes = [e for (v, _, _), e in self.votes.items() if version in (None, v)]
        return {
            "inferences": len(inf),
            "errors": sum(e.status == "error" for e in inf),
            "feedback": len(votes),
            "thumbs_up": sum(e.rating == UP for e in votes),
            "thumbs_down": sum(e.rating == DOWN for e in votes),
            "corrections": sum(e.corrected_output is not None for e in votes),
        }


def reference_of(events: Sequence[Event]) -> Reference:
    ref = Reference()
    for event in events:
        ref.add(event)
    return ref


def summary_counts(summary: dict[str, Any] | None, version: str | None = None) -> dict[str, int] | None:
    if summary is None:
        return None
    row = summary["totals"] if version is None else summary["versions"].get(version, {}).get("totals", {})
    return {k: row.get(k, 0) for k in COUNT_FIELDS}


def records(events: Sequence[Event]) -> list[Record]:
    return [Record.of(e) for e in events]


# --- fixtures ------------------------------------------------------------------------------------


class Worker(WorkerProcess):
    """`flywheel run feedback-aggregation` as a subprocess."""

    service = "feedback-aggregation"
    port_var = "FLYWHEEL_FEEDBACK_WEB_PORT"
    start_timeout_s = WAIT_S
