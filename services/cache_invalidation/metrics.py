"""Prometheus metrics of the cache invalidation worker."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

APPLIED = Counter(
    "flywheel_invalidation_events_applied_total", "Alias changes written to the resolution cache"
)
STALE = Counter(
    "flywheel_invalidation_events_stale_total",
    "Events older than the stored entry of their alias (ignored, no notice)",
)
REDELIVERED = Counter(
    "flywheel_invalidation_events_redelivered_total",
    "Events already applied (redelivery after a restart): the reload notice is sent again",
)
SKIPPED = Counter("flywheel_invalidation_events_skipped_total", "Events of models this worker does not watch")
NOTICES = Counter("flywheel_invalidation_reload_notices_published_total", "Reload notices published")
APPLY_ERRORS = Counter(
    "flywheel_invalidation_apply_errors_total",
    "Failed attempts to apply an event (retried with back-off until they succeed), by kind",
    ["kind"],
)
CACHE_KEYS_DROPPED = Counter(
    "flywheel_invalidation_cache_keys_dropped_total",
    "Per-model cache entries (fields of the model's cache hash) deleted after a change",
)
LAST_APPLIED_LAG = Gauge(
    "flywheel_invalidation_last_applied_lag_seconds",
    "Seconds between an event's occurred_at and its application, for the last applied event",
)
REBUILDS = Counter(
    "flywheel_invalidation_cache_rebuilds_total",
    "Times the resolution cache was found gone (Redis came back empty, or a new namespace) and rebuilt",
)
