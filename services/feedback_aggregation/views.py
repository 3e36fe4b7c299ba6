"""One model's state as the worker holds it in memory (`ModelView`), and the views written from it:
the summary (`read_summary`: counts per version, trigger verdict, publications) and the snapshot
(the state at a `seq`, so a restart replays only the journal after it). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from events import FeedbackRecorded, InferenceRecorded, decode
from services.feedback_aggregation.adapters.dataset_publisher import Pending
from services.feedback_aggregation.adapters.store import StoredModel
from services.feedback_aggregation.counts_epoch import CountsEpoch
from services.feedback_aggregation.domain.aggregates import (
    AggregateConfig,
    AggregateState,
    Counts,
    apply,
    new_state,
)
from services.feedback_aggregation.domain.triggers import TriggerDecision, TriggerPolicy, TriggerState
from services.shared.jsontext import dumps, loads, rfc3339

SNAPSHOT_FORMAT = 1
SUMMARY_FORMAT = 1


@dataclass
class ModelView:
    """One model's state in memory: a cache of what Redis holds (rebuilt from it whenever in doubt)."""

    model: str
    seq: int = 0
    snapshot_seq: int = 0
    states: dict[str, AggregateState] = field(default_factory=dict)
    trigger: TriggerState = field(default_factory=TriggerState)
    trigger_raw: str = ""
    pending: Pending | None = None
    last_publication: dict[str, Any] | None = None
    decision: TriggerDecision | None = None
    evaluated_at: datetime | None = None


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def _rates(counts: Counts) -> dict[str, Any]:
    return {
        **counts.to_json(),
        "thumbs_up_rate": counts.thumbs_up_rate,
        "thumbs_down_rate": counts.thumbs_down_rate,
    }


def snapshot_json(view: ModelView) -> str:
    return dumps({"format": SNAPSHOT_FORMAT, "versions": {v: s.to_json() for v, s in view.states.items()}})


def build_summary(
    view: ModelView,
    now: datetime,
    config: AggregateConfig,
    policy: TriggerPolicy,
    applied: int | None = None,
    epoch: CountsEpoch | None = None,
) -> dict[str, Any]:
    """What `read_summary` returns: counts per version (totals and the windows of the rate window),
    the trigger's last verdict, the pending and the last publication, and since when the counts count
    (`counts_epoch.py`). `applied` = events applied (the model's seq) once the write this summary goes
    with succeeds."""
    versions: dict[str, Any] = {}
    total = Counts()
    for version in sorted(view.states, key=_version_key):
        state = view.states[version]
        total.add(state.totals)
        floor = (state.watermark or 0) - policy.rate_window_s
        versions[version] = {
            "totals": _rates(state.totals),
            "windows": [
                {"start": rfc3339(datetime.fromtimestamp(start, UTC)), **_rates(counts)}
                for start, counts in sorted(state.windows.items())
                if start > floor
            ],
            "late": state.late,
            "duplicates": state.duplicates,
            "tracked_ids": state.tracked,
        }
    decision = view.decision
    return {
        "format": SUMMARY_FORMAT,
        "model": view.model,
        "updated_at": rfc3339(now),
        "applied_events": view.seq if applied is None else applied,
        "counts_since": rfc3339(datetime.fromtimestamp(epoch.since, UTC)) if epoch else None,
        "earlier_counts_lost": epoch.earlier_lost if epoch else False,
        "window_s": config.window_s,
        "rate_window_s": policy.rate_window_s,
        "totals": _rates(total),
        "versions": versions,
        "trigger": {
            **view.trigger.to_json(),
            "verdict": decision.verdict if decision else ("publishing" if view.pending else None),
            "explanation": decision.explanation if decision else None,
            "metrics": decision.metrics if decision else {},
            "evaluated_at": rfc3339(view.evaluated_at) if view.evaluated_at else None,
        },
        "pending_publication": view.pending.to_json() if view.pending else None,
        "last_publication": view.last_publication,
    }


def view_from_stored(model: str, stored: StoredModel, config: AggregateConfig) -> ModelView:
    """The model as Redis holds it: the snapshot, then the journal replayed through `apply`
    (deterministic, so this is the state as it was when each event was applied)."""
    if len(stored.journal) != stored.seq - stored.snapshot_seq:
        expected = stored.seq - stored.snapshot_seq
        raise RuntimeError(f"{model}: journal holds {len(stored.journal)} events, expected {expected}")
    view = ModelView(model=model, seq=stored.seq, snapshot_seq=stored.snapshot_seq)
    if stored.snapshot is not None:
        if stored.snapshot.get("format") != SNAPSHOT_FORMAT:
            raise RuntimeError(f"{model}: unsupported snapshot format {stored.snapshot.get('format')!r}")
        view.states = {v: AggregateState.from_json(s) for v, s in stored.snapshot["versions"].items()}
    for raw in stored.journal:
        event = decode(raw)
        assert isinstance(event, InferenceRecorded | FeedbackRecorded)
        state = view.states.setdefault(event.version, new_state(model, event.version))
        apply(state, event, config)
    if stored.trigger:
        view.trigger = TriggerState.from_json(loads(stored.trigger))
    view.trigger_raw = stored.trigger
    view.pending = Pending.from_json(stored.pending) if stored.pending else None
    view.last_publication = stored.last_publication
    return view
