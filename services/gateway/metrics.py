"""Prometheus metrics of a gateway replica."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "flywheel_gateway_requests_total", "Predictions served", ["model", "version", "variant", "status"]
)
LATENCY = Histogram(
    "flywheel_gateway_request_seconds",
    "Prediction latency (model call, tracing and event hand-off), by the variant that answered",
    ["model", "variant"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REJECTED = Counter("flywheel_gateway_rejected_total", "Requests refused before the model ran", ["reason"])
RELOADS = Counter("flywheel_gateway_reloads_total", "Alias reloads by outcome", ["model", "outcome"])
RELOAD_SECONDS = Histogram(
    "flywheel_gateway_reload_seconds", "Preload time of a new version before the swap", ["model"]
)
SERVING_VERSION = Gauge(
    "flywheel_gateway_serving_version",
    "Version each alias serves (numeric MLflow version)",
    ["model", "alias"],
)
NOTICES = Counter("flywheel_gateway_reload_notices_total", "Reload notices received from Redis")
RECONCILES = Counter("flywheel_gateway_reconciles_total", "Reconciliations with the cache", ["outcome"])
REDIS_RECONNECTS = Counter("flywheel_gateway_redis_reconnects_total", "Reload subscription reconnects")
EVENTS = Counter("flywheel_gateway_inference_events_total", "InferenceRecorded events", ["outcome"])
EVENT_QUEUE = Gauge("flywheel_gateway_inference_queue", "InferenceRecorded events waiting to be sent")
TRACE_ERRORS = Counter("flywheel_gateway_trace_errors_total", "Predictions whose trace could not be made")
FEEDBACK_ON_TRACE = Counter(
    "flywheel_gateway_feedback_on_trace_total", "Feedback attached to its MLflow trace", ["outcome"]
)
REQUEST_LOG = Counter(
    "flywheel_gateway_request_log_total",
    "Request log entries (written, unavailable = Redis down, poison = could not be serialised)",
    ["outcome"],
)
SHADOW = Counter(
    "flywheel_gateway_shadow_calls_total",
    "Champion requests mirrored to the challenger in a shadow step, by outcome (agreed, differed, error, "
    "dropped: the replica's shadow slots were busy)",
    ["outcome"],
)
BATCH_REQUESTS = Histogram(
    "flywheel_gateway_batch_requests",
    "Requests predicted together in one model call (adaptive micro-batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
FEEDBACK_UNENRICHED = Counter(
    "flywheel_gateway_feedback_unenriched_total",
    "Ratings accepted on their token's served facts before the request log had the prediction's entry "
    "(published without inputs and outputs)",
)
