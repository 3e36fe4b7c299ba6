"""Prometheus metrics of the registry watcher."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter("flywheel_watcher_webhooks_received_total", "Webhook deliveries received")
VERIFIED = Counter("flywheel_watcher_webhooks_verified_total", "Webhook deliveries with a valid signature")
REJECTED = Counter(
    "flywheel_watcher_webhooks_rejected_total", "Webhook deliveries refused, by reason", ["reason"]
)
IGNORED = Counter(
    "flywheel_watcher_webhooks_ignored_total", "Valid registry events that are not alias events", ["kind"]
)
DEDUP_HITS = Counter(
    "flywheel_watcher_dedup_hits_total",
    "Changes not published again: repeated delivery id, or alias already in that state",
    ["kind"],
)
PUBLISHED = Counter(
    "flywheel_watcher_events_published_total", "AliasChanged events acked by Kafka", ["source"]
)
PUBLISH_FAILURES = Counter("flywheel_watcher_publish_failures_total", "Kafka publish attempts that failed")
POLLS = Counter("flywheel_watcher_polls_total", "Completed poll cycles")
POLL_ERRORS = Counter("flywheel_watcher_poll_errors_total", "Poll cycles that failed")
POLL_DURATION = Histogram(
    "flywheel_watcher_poll_duration_seconds",
    "Duration of one poll cycle",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POLL_LAG = Gauge(
    "flywheel_watcher_poll_lag_seconds",
    "Seconds since the last successful poll (how stale the safety net's view may be)",
)
POISON = Counter(
    "flywheel_watcher_outbox_poison_total", "Unreadable outbox entries moved to the dead-letter list"
)
POLL_REPAIRS = Counter(
    "flywheel_watcher_poll_repairs_total",
    "Alias changes of known models that the poller found before any webhook delivered them",
)
WEBHOOK_FAILING = Gauge(
    "flywheel_watcher_webhook_deliveries_failing",
    "1 while the poller repairs alias changes that no webhook delivered (see GET /v1/webhook-health)",
)
STATE_RESTORES = Counter(
    "flywheel_watcher_state_restores_total",
    "Times the alias state was found gone (Redis came back empty) and restored from the alias-changed topic",
)
