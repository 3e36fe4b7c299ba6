"""The facts a trace carries: tags first, metadata for traces written before tags were used."""

from __future__ import annotations

from services.shared import trace_facts


def test_tags_win_over_metadata_and_only_flywheel_keys_are_facts() -> None:
    tags = {"flywheel.model": "wine", "mlflow.traceName": "predict wine"}
    metadata = {"flywheel.model": "old", "flywheel.version": "3", "mlflow.trace.user": "u"}
    assert trace_facts.facts_of(tags, metadata) == {"flywheel.model": "wine", "flywheel.version": "3"}
    assert trace_facts.facts_of(None, None) == {}


def test_facts_become_trace_tag_attributes_and_are_searched_in_both_places() -> None:
    attributes = trace_facts.as_span_attributes({trace_facts.MODEL: "wine"})
    assert attributes == {"mlflow.traceTag.flywheel.model": "wine"}
    assert trace_facts.search_filters(trace_facts.REQUEST_ID, "'ab'") == (
        "tags.`flywheel.request_id` = 'ab'",
        "metadata.`flywheel.request_id` = 'ab'",
    )
