"""Prometheus metrics of the retrainer."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

OUTCOMES = Counter(
    "flywheel_retrainer_requests_total",
    "Retraining requests handled, by outcome (challenger, gates_failed, dataset_rejected, failed, "
    "duplicate, skipped, undecodable)",
    ["outcome"],
)
FAILURES = Counter(
    "flywheel_retrainer_failures_total",
    "Failures while handling a request, by stage (dataset, training, attempt = retried infrastructure "
    "error, recording, publishing = RetrainingFinished not yet acknowledged)",
    ["stage"],
)
GATES = Counter("flywheel_retrainer_gates_total", "Quality gate results", ["gate", "result"])
DURATION = Histogram(
    "flywheel_retrainer_duration_seconds",
    "Time to handle one request (download, training, evaluation, registration)",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
ACCURACY = Gauge(
    "flywheel_retrainer_last_accuracy",
    "Held-out accuracy of the last candidate and its baseline",
    ["model", "of"],
)
