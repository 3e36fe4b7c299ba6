"""DataExporter: training data straight from MLflow traces with feedback (the source of truth).

Parity with the toolkit it replaces (REFERENCE.md): `query_traces_with_feedback(model_name, rating,
start_date, end_date, limit)`, `export_training_data(traces, format, path)` and `export_streaming(model_name,
rating, format, path, ...)` for large volumes (page by page, never all traces in memory). Each example
uses the user's `corrected_output` when one was given, else the original output; a thumbs-down without a
correction is not a usable example and is skipped (and counted). Formats: csv, json, jsonl, parquet.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Trace

from events import DatasetFile
from services.feedback_aggregation.adapters.dataset_writer import ExportFormat, export_rows
from services.feedback_aggregation.domain.examples import ExampleRow
from services.shared import trace_facts

RATINGS = ("thumbs_up", "thumbs_down")
PAGE = 200


def _ms(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _jsonish(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class DataExporter:
    def __init__(self, tracking_uri: str, trace_experiment: str = "flywheel/serving") -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.trace_experiment = trace_experiment
        self.skipped = 0

    def _locations(self) -> list[str]:
        experiment = self.client.get_experiment_by_name(self.trace_experiment)
        return [experiment.experiment_id] if experiment else []

    def _filters(
        self, model_name: str, rating: str | None, start: datetime | None, end: datetime | None
    ) -> tuple[str, ...]:
        """One search filter per place a trace keeps its model (tags; metadata for older traces)."""
        if rating is not None and rating not in RATINGS:
            raise ValueError(f"rating must be one of {', '.join(RATINGS)}, got {rating!r}")
        clauses = []
        if rating:
            clauses.append(f"feedback.user_rating = '{rating}'")
        if start:
            clauses.append(f"trace.timestamp_ms >= {_ms(start)}")
        if end:
            clauses.append(f"trace.timestamp_ms < {_ms(end)}")
        literal = "'" + model_name.replace(chr(39), "") + "'"
        return tuple(
            " AND ".join([by_model, *clauses])
            for by_model in trace_facts.search_filters(trace_facts.MODEL, literal)
        )

    def _pages(self, filter_string: str) -> Iterator[Trace]:
        """Traces matching `filter_string`, page by page, oldest first."""
        locations = self._locations()
        if not locations:
            return
        token: str | None = None
        while True:
            page = self.client.search_traces(
                locations=locations,
                filter_string=filter_string,
                max_results=PAGE,
                order_by=["timestamp_ms ASC"],
                page_token=token,
            )
            yield from page
            token = page.token
            if not token:
                return

    def _traces(self, filters: Iterable[str], limit: int | None) -> Iterator[Trace]:
        """Traces matching any of `filters`, oldest first, each once, at most `limit`."""
        seen: set[str] = set()
        merged = heapq.merge(*(self._pages(f) for f in filters), key=lambda t: t.info.request_time)
        for trace in merged:
            if trace.info.trace_id in seen:
                continue
            seen.add(trace.info.trace_id)
            yield trace
            if limit is not None and len(seen) >= limit:
                return

    def query_traces_with_feedback(
        self,
        model_name: str,
        rating: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        limit: int = 1000,
    ) -> list[Trace]:
        return list(self._traces(self._filters(model_name, rating, start_date, end_date), limit))

    def to_example(self, trace: Trace, rating: str | None = None) -> ExampleRow | None:
        """One example from a trace: corrected output first, else the original (thumbs-up) output."""
        info = trace.info
        meta = trace_facts.facts_of(info.tags, info.trace_metadata)
        assessments = list(info.assessments or [])
        ratings = [a for a in assessments if a.name == "user_rating" and getattr(a, "feedback", None)]
        corrections = [
            a for a in assessments if a.name == "corrected_output" and getattr(a, "expectation", None)
        ]
        latest_rating = max(ratings, key=lambda a: a.create_time_ms or 0) if ratings else None
        given = str(latest_rating.feedback.value) if latest_rating and latest_rating.feedback else None
        root = trace.data.spans[0] if trace.data and trace.data.spans else None
        inputs = root.inputs if root is not None else None
        output: Any
        if corrections:
            chosen = max(corrections, key=lambda a: a.create_time_ms or 0)
            expectation = chosen.expectation
            output, source, who = (expectation.value if expectation else None), "corrected", chosen.source
        elif latest_rating is not None and given == "thumbs_up" and rating in (None, "thumbs_up"):
            output, source, who = (
                (root.outputs if root is not None else None),
                "thumbs_up",
                latest_rating.source,
            )
        else:
            self.skipped += 1
            return None
        feedback_ms = max((a.create_time_ms or 0) for a in [*ratings, *corrections]) or info.request_time
        return ExampleRow(
            request_id=meta.get(trace_facts.REQUEST_ID, info.client_request_id or info.trace_id),
            model=meta.get(trace_facts.MODEL, ""),
            version=meta.get(trace_facts.VERSION, ""),
            inputs=_jsonish(inputs),
            output=_jsonish(output),
            source=source,  # type: ignore[arg-type]
            rating=given or "thumbs_down",
            user_id=getattr(who, "source_id", None),
            feedback_at=datetime.fromtimestamp(feedback_ms / 1000, tz=UTC),
            served_at=datetime.fromtimestamp(info.request_time / 1000, tz=UTC),
            trace_id=info.trace_id,
        )

    def examples(self, traces: Iterable[Trace], rating: str | None = None) -> Iterator[ExampleRow]:
        for trace in traces:
            row = self.to_example(trace, rating)
            if row is not None:
                yield row

    def export_training_data(self, traces: Iterable[Trace], fmt: ExportFormat, path: Path) -> DatasetFile:
        return export_rows(self.examples(traces), Path(path), fmt, overwrite=True)

    def export_streaming(
        self,
        model_name: str,
        rating: str | None,
        fmt: ExportFormat,
        path: Path,
        *,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        limit: int | None = None,
        on_trace: Callable[[], None] | None = None,
    ) -> DatasetFile:
        """Stream matching traces into `path` without holding them all in memory."""

        def counted() -> Iterator[Trace]:
            for trace in self._traces(self._filters(model_name, rating, start_date, end_date), limit):
                if on_trace is not None:
                    on_trace()
                yield trace

        return export_rows(self.examples(counted(), rating), Path(path), fmt, overwrite=True)
