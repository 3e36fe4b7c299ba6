"""Prometheus metrics of the feedback aggregation worker."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "flywheel_feedback_events_total",
    "Events handled, by topic and outcome (counted, revised, duplicate, late: core.aggregates; "
    "redelivered: already applied, recognised by offset; skipped: model not watched, or a shadow answer; "
    "undecodable)",
    ["topic", "outcome"],
)
BATCH_SECONDS = Histogram(
    "flywheel_feedback_batch_seconds",
    "Time to apply one batch of events and persist it with its offsets",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
BATCH_EVENTS = Histogram(
    "flywheel_feedback_batch_events",
    "Events of watched models per batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
)
SUMMARIES = Counter(
    "flywheel_feedback_summary_flushes_total",
    "Summaries written on their own (after the summary interval) rather than with a batch",
)
CONFLICTS = Counter(
    "flywheel_feedback_state_conflicts_total",
    "Writes refused because another worker changed the model's state (reloaded and retried)",
)
SNAPSHOTS = Counter("flywheel_feedback_snapshots_total", "Aggregate snapshots written")
TRIGGERS = Counter("flywheel_feedback_triggers_total", "Retraining triggers fired, by reason", ["reason"])
PUBLICATIONS = Counter(
    "flywheel_feedback_publications_total",
    "Dataset publications finished, by how (new run, resumed run, no dataset)",
    ["kind"],
)
PENDING = Gauge("flywheel_feedback_publications_pending", "Dataset publications in progress")
ERRORS = Counter("flywheel_feedback_errors_total", "Failures (retried), by stage", ["stage"])
STATE_LOST = Counter(
    "flywheel_feedback_state_lost_total",
    "Times the counts were found gone (Redis came back empty) while the group had committed offsets",
)
