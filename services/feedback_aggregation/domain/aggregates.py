"""Windowed counts of inferences and feedback per (model, version), idempotent under redelivery.

Kafka delivers at least once, so `apply` must give the same state whether an event arrives once or
five times, and in any order. What counts as "the same" is chosen per event type:

- An inference is identified by its `request_id` (the gateway makes one per prediction), so a redelivered
  InferenceRecorded (same event, same request) is counted once.
- Feedback is one *vote* per (request_id, user_id): a repeated submission by the same user for the same
  request does not count twice, even though the gateway gave it a new `feedback_id`/`event_id`. If the
  user changed their mind (thumbs up, later thumbs down, or added a correction), the newest vote by
  `(occurred_at, event_id)` replaces the older one: its contribution is subtracted from the window it was
  counted in and the new one is added, so counts do not depend on arrival order. Anonymous feedback
  (`user_id` null) is one vote per request: we cannot tell anonymous users apart, and counting each
  anonymous click would let one person inflate a rate.

Events are put in tumbling windows of `window_s` seconds by `occurred_at` (the window key is its start,
in epoch seconds). Memory is bounded two ways:
- windows older than `retention_s` before the newest window seen (the watermark) are dropped;
- the ids remembered for deduplication are capped at `max_tracked`; when the cap is exceeded, the
  oldest windows' ids are forgotten (never the newest window's: a single window holding more than the cap
  is kept whole rather than rejecting the present).
Both move the *horizon*: an event whose window starts below it is rejected as `LATE` instead of counted.
That keeps idempotency exact: an event is either inside the horizon, where its id is remembered, or
rejected, never counted a second time because its id was forgotten. Under heavy traffic the cap shortens
how late an event may arrive rather than letting the state grow. `totals` are never pruned. One limit
follows: a user who revises a vote after it fell behind the horizon is counted as a second vote.

The state is mutated in place (it can hold tens of thousands of ids, copying it per event would cost
more than the rest) and round-trips through `to_json`/`from_json` for a Faust table or Redis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from events import FeedbackRating, FeedbackRecorded, InferenceRecorded
from services.shared.jsontext import epoch_us

STATE_FORMAT = 1


@dataclass(frozen=True)
class AggregateConfig:
    """Window size, how long windows are kept, and how many dedup ids a (model, version) may hold."""

    window_s: int = 60
    retention_s: int = 6 * 3600
    max_tracked: int = 50_000

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.retention_s < self.window_s or self.max_tracked <= 0:
            raise ValueError("need window_s > 0, retention_s >= window_s and max_tracked > 0")

    def window_of(self, at: datetime) -> int:
        """Start (epoch seconds) of the tumbling window containing `at`."""
        seconds = epoch_us(at) // 1_000_000
        return seconds - seconds % self.window_s


@dataclass
class Counts:
    """What one (model, version) saw in a window or in total; a revised vote moves between the fields."""

    inferences: int = 0  # predictions served, failed ones included
    errors: int = 0  # of those, the failed ones
    feedback: int = 0  # votes counted (one per request and user: the latest)
    thumbs_up: int = 0
    thumbs_down: int = 0
    corrections: int = 0  # votes that came with a corrected output

    @property
    def rated(self) -> int:
        return self.thumbs_up + self.thumbs_down

    @property
    def thumbs_up_rate(self) -> float | None:
        """Share of thumbs up among rated predictions; None without ratings (0/0 is not 0%)."""
        return self.thumbs_up / self.rated if self.rated else None

    @property
    def thumbs_down_rate(self) -> float | None:
        return self.thumbs_down / self.rated if self.rated else None

    def add(self, other: Counts, sign: int = 1) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + sign * getattr(other, f.name))

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counts:
        return cls(**{f.name: int(data.get(f.name, 0)) for f in fields(cls)})


@dataclass(frozen=True)
class Vote:
    """The vote currently counted for one (request, user): enough to undo it when it is revised."""

    window: int
    rating: str
    corrected: bool
    at_us: int
    event_id: str

    def order_key(self) -> tuple[int, str]:
        return (self.at_us, self.event_id)

    def counts(self) -> Counts:
        up = self.rating == FeedbackRating.THUMBS_UP
        return Counts(feedback=1, thumbs_up=int(up), thumbs_down=int(not up), corrections=int(self.corrected))


class Outcome(StrEnum):
    COUNTED = "counted"  # new inference or new vote
    REVISED = "revised"  # newer vote of the same user on the same request replaced the old one
    DUPLICATE = "duplicate"  # redelivery, or an older vote than the one counted
    LATE = "late"  # before the horizon: cannot be deduplicated any more, so not counted


def state_key(model: str, version: str) -> str:
    """Table key of a (model, version): JSON, so no model name can make two keys collide."""
    return json.dumps([model, version], separators=(",", ":"))


def vote_key(request_id: str, user_id: str | None) -> str:
    return json.dumps([request_id, user_id or ""], separators=(",", ":"))


@dataclass
class AggregateState:
    """Counts of one (model, version); see the module docstring for the dedup and pruning rules."""

    model: str
    version: str
    totals: Counts = field(default_factory=Counts)
    windows: dict[int, Counts] = field(default_factory=dict)
    watermark: int | None = None  # newest window start seen
    horizon: int | None = None  # events in windows starting below it are LATE
    late: int = 0
    duplicates: int = 0
    inference_ids: dict[int, set[str]] = field(default_factory=dict)  # window -> request ids
    votes: dict[str, Vote] = field(default_factory=dict)  # vote_key -> counted vote
    vote_index: dict[int, set[str]] = field(default_factory=dict)  # window -> vote keys (for eviction)

    @property
    def tracked(self) -> int:
        return len(self.votes) + sum(len(ids) for ids in self.inference_ids.values())

    def since(self, window_start: int) -> Counts:
        """Sum of the retained windows starting at or after `window_start`."""
        total = Counts()
        for start, counts in self.windows.items():
            if start >= window_start:
                total.add(counts)
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "model": self.model,
            "version": self.version,
            "totals": self.totals.to_json(),
            "windows": {str(k): v.to_json() for k, v in sorted(self.windows.items())},
            "watermark": self.watermark,
            "horizon": self.horizon,
            "late": self.late,
            "duplicates": self.duplicates,
            "inference_ids": {str(k): sorted(v) for k, v in sorted(self.inference_ids.items())},
            "votes": {
                k: [v.window, v.rating, v.corrected, v.at_us, v.event_id] for k, v in self.votes.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AggregateState:
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported aggregate state format {data.get('format')!r}")
        state = cls(
            model=data["model"],
            version=data["version"],
            totals=Counts.from_json(data["totals"]),
            windows={int(k): Counts.from_json(v) for k, v in data["windows"].items()},
            watermark=data["watermark"],
            horizon=data["horizon"],
            late=data["late"],
            duplicates=data["duplicates"],
            inference_ids={int(k): set(v) for k, v in data["inference_ids"].items()},
        )
        for key, (window, rating, corrected, at_us, event_id) in data["votes"].items():
            state.votes[key] = Vote(int(window), rating, bool(corrected), int(at_us), event_id)
            state.vote_index.setdefault(int(window), set()).add(key)
        return state


def new_state(model: str, version: str) -> AggregateState:
    return AggregateState(model=model, version=version)


def apply(
    state: AggregateState, event: InferenceRecorded | FeedbackRecorded, config: AggregateConfig
) -> Outcome:
    """Count `event` into `state` (in place) unless it was counted already; what happened is returned."""
    if (event.model, event.version) != (state.model, state.version):
        raise ValueError(f"event for {event.model}/{event.version} applied to {state.model}/{state.version}")
    window = config.window_of(event.occurred_at)
    _advance(state, window, config)
    if state.horizon is not None and window < state.horizon:
        state.late += 1
        return Outcome.LATE
    if isinstance(event, InferenceRecorded):
        outcome = _apply_inference(state, event, window)
    else:
        outcome = _apply_feedback(state, event, window)
    if outcome is Outcome.DUPLICATE:
        state.duplicates += 1
    elif state.tracked > config.max_tracked:
        _evict(state, config)
    return outcome


def _apply_inference(state: AggregateState, event: InferenceRecorded, window: int) -> Outcome:
    ids = state.inference_ids.setdefault(window, set())
    if event.request_id in ids:
        return Outcome.DUPLICATE
    ids.add(event.request_id)
    delta = Counts(inferences=1, errors=int(event.status == "error"))
    _count(state, window, delta, 1)
    return Outcome.COUNTED


def _apply_feedback(state: AggregateState, event: FeedbackRecorded, window: int) -> Outcome:
    key = vote_key(event.request_id, event.user_id)
    vote = Vote(
        window=window,
        rating=str(event.rating),
        corrected=event.corrected_output is not None,
        at_us=epoch_us(event.occurred_at),
        event_id=event.event_id,
    )
    old = state.votes.get(key)
    if old is not None and vote.order_key() <= old.order_key():
        return Outcome.DUPLICATE
    if old is not None:
        _count(state, old.window, old.counts(), -1)
        state.vote_index[old.window].discard(key)
    state.votes[key] = vote
    state.vote_index.setdefault(window, set()).add(key)
    _count(state, window, vote.counts(), 1)
    return Outcome.COUNTED if old is None else Outcome.REVISED


def _count(state: AggregateState, window: int, delta: Counts, sign: int) -> None:
    state.totals.add(delta, sign)
    state.windows.setdefault(window, Counts()).add(delta, sign)


def _advance(state: AggregateState, window: int, config: AggregateConfig) -> None:
    """Move the watermark to `window` if newer, then drop what fell out of the retention."""
    if state.watermark is not None and window <= state.watermark:
        return
    state.watermark = window
    floor = window - config.retention_s + 1
    _raise_horizon(state, floor)
    for start in [s for s in state.windows if s < floor]:
        del state.windows[start]


def _raise_horizon(state: AggregateState, horizon: int) -> None:
    if state.horizon is not None and horizon <= state.horizon:
        return
    state.horizon = horizon
    for start in [s for s in state.inference_ids if s < horizon]:
        del state.inference_ids[start]
    for start in [s for s in state.vote_index if s < horizon]:
        for key in state.vote_index.pop(start):
            del state.votes[key]


def _evict(state: AggregateState, config: AggregateConfig) -> None:
    """Forget the oldest windows' ids until 90% of the cap (hysteresis: not a scan on every event)."""
    target = config.max_tracked * 9 // 10
    starts = sorted(set(state.inference_ids) | set(state.vote_index))
    tracked = state.tracked
    for start in starts:
        if tracked <= target or start == state.watermark:
            break
        tracked -= len(state.inference_ids.get(start, ())) + len(state.vote_index.get(start, ()))
        _raise_horizon(state, start + 1)


class Aggregator:
    """All (model, version) states of one process, keyed by `state_key` (what a Faust table holds)."""

    def __init__(self, config: AggregateConfig | None = None) -> None:
        self.config = config or AggregateConfig()
        self.states: dict[str, AggregateState] = {}

    def apply(self, event: InferenceRecorded | FeedbackRecorded) -> Outcome:
        key = state_key(event.model, event.version)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = new_state(event.model, event.version)
        return apply(state, event, self.config)

    def get(self, model: str, version: str) -> AggregateState | None:
        return self.states.get(state_key(model, version))


def report(state: AggregateState, config: AggregateConfig) -> dict[str, Any]:
    """JSON summary for `flywheel status` and logs: totals and each retained window with its rate."""

    def row(counts: Counts) -> dict[str, Any]:
        return {**counts.to_json(), "thumbs_up_rate": counts.thumbs_up_rate}

    return {
        "model": state.model,
        "version": state.version,
        "window_s": config.window_s,
        "totals": row(state.totals),
        "windows": [
            {"start": datetime.fromtimestamp(start, UTC).isoformat().replace("+00:00", "Z"), **row(counts)}
            for start, counts in sorted(state.windows.items())
        ],
        "late": state.late,
        "duplicates": state.duplicates,
        "tracked_ids": state.tracked,
    }
