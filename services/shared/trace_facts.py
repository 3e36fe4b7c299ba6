"""The facts a prediction's MLflow trace carries (`flywheel.*`), written by the gateway, read by feedback and
the dataset export: one place for the keys and for where they live on a trace.

Where: since traces are written with `log_spans` alone (one batched call per export batch, which costs the
MLflow server ~2.6 ms of CPU per trace instead of ~10 ms through one StartTraceV3 per trace: measured side
by side on one server), the facts travel as **trace tags**: root-span attributes `mlflow.traceTag.<key>`,
which MLflow's span ingestion turns into the trace's tags. Traces written before that carry them as trace
metadata; readers take both (`facts_of`), and searches ask both (`search_filters`).
"""

from __future__ import annotations

from collections.abc import Mapping

from mlflow.tracing.constant import SpanAttributeKey

REQUEST_ID = "flywheel.request_id"
MODEL = "flywheel.model"
VERSION = "flywheel.version"
ALIAS = "flywheel.alias"
VARIANT = "flywheel.variant"
REPLICA = "flywheel.replica"
KEYS = (REQUEST_ID, MODEL, VERSION, ALIAS, VARIANT, REPLICA)


def as_span_attributes(facts: Mapping[str, str]) -> dict[str, str]:
    """Root-span attributes that become the trace's tags when MLflow ingests the span."""
    return {SpanAttributeKey.TRACE_TAG_PREFIX + key: value for key, value in facts.items()}


def facts_of(tags: Mapping[str, str] | None, metadata: Mapping[str, str] | None) -> dict[str, str]:
    """The `flywheel.*` facts of a trace (tags win; metadata for traces written before tags were used)."""
    found = {k: v for k, v in (metadata or {}).items() if k.startswith("flywheel.")}
    found.update({k: v for k, v in (tags or {}).items() if k.startswith("flywheel.")})
    return found


def search_filters(key: str, literal: str) -> tuple[str, str]:
    """MLflow trace-search clauses matching `key = literal` as a tag and as metadata (both: older traces
    hold the facts as metadata; MLflow's filter has no OR)."""
    return f"tags.`{key}` = {literal}", f"metadata.`{key}` = {literal}"
