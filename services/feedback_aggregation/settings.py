"""Feedback aggregation configuration (environment variables with prefix FLYWHEEL_, see README)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field, model_validator

from services.feedback_aggregation.domain.aggregates import AggregateConfig
from services.feedback_aggregation.domain.triggers import TriggerPolicy
from services.shared.fields import (
    consumer_group_field,
    count_field,
    metrics_host_field,
    metrics_port_field,
    positive_field,
    worker_port_field,
)
from services.shared.settings import FlywheelSettings


def _default_dataset_dir() -> Path:
    return Path(tempfile.gettempdir()) / "flywheel-datasets"


class FeedbackSettings(FlywheelSettings):
    feedback_group_id: str = consumer_group_field(
        "flywheel-feedback-aggregation",
        "Kafka consumer group (= Faust app id). A new id re-reads the topics from the start; "
        "events already applied under the same Redis prefix are recognised by offset and skipped.",
    )
    feedback_web_port: int = worker_port_field(6072)
    feedback_metrics_host: str = metrics_host_field()
    feedback_metrics_port: int = metrics_port_field()

    # retraining trigger policy (core.triggers)
    feedback_min_corrections: int = count_field(
        20, "Corrections since the last trigger that request a retraining."
    )
    feedback_thumbs_down_rate: float = Field(
        default=0.3,
        ge=0,
        lt=1,
        description="Thumbs-down share of ratings in the window above which to retrain.",
    )
    feedback_min_sample: int = count_field(
        30, "Ratings in the window needed before the thumbs-down rate counts."
    )
    feedback_window_s: int = count_field(600, "Window of the thumbs-down rate, seconds.")
    feedback_cooldown_s: int = count_field(
        600, "No new trigger for this long after one (seconds).", minimum=0
    )

    # aggregates (core.aggregates)
    feedback_bucket_s: int = count_field(60, "Tumbling window of the counts, seconds.")
    feedback_retention_s: int = count_field(6 * 3600, "How long windows (and dedup ids) are kept, seconds.")
    feedback_max_tracked: int = count_field(
        50_000, "Dedup ids kept per (model, version); see core.aggregates."
    )

    # persistence and publication
    feedback_snapshot_every: int = count_field(
        500,
        "Events journaled per model before the aggregates are snapshotted (restart replays at "
        "most this many).",
    )
    feedback_buffer_max: int = count_field(
        200_000, "Feedback events buffered per model for the next dataset (newest kept)."
    )
    feedback_batch_max: int = count_field(
        500, "Most events one agent applies and persists in one batch (one Redis write)."
    )
    feedback_batch_within_ms: int = count_field(
        5,
        "How long a batch waits for more events when none is queued, milliseconds, counted "
        "from its first event (the most an event waits for company; 0 = apply what is queued at once).",
        minimum=0,
    )
    feedback_summary_interval_ms: int = count_field(
        50,
        "A model's summary is written at most this often, milliseconds (the last one of a "
        "burst at most this late); 0 = with every batch.",
        minimum=0,
    )
    feedback_tick_s: float = positive_field(
        5.0, "How often triggers are re-evaluated without new events (cooldowns)."
    )
    feedback_lease_s: float = Field(
        default=30.0,
        gt=1,
        description="Lease of a dataset publication; a crashed worker's publication is resumed after it.",
    )
    feedback_experiment: str = Field(
        default="flywheel/feedback-datasets", min_length=1, description="MLflow experiment of dataset runs."
    )
    dataset_dir: Path = Field(
        default_factory=_default_dataset_dir,
        description="FLYWHEEL_DATASET_DIR: local directory the dataset versions are written into.",
    )

    @model_validator(mode="after")
    def _windows_fit(self) -> FeedbackSettings:
        if self.feedback_retention_s < max(self.feedback_bucket_s, self.feedback_window_s):
            raise ValueError("FLYWHEEL_FEEDBACK_RETENTION_S must cover the bucket and the rate window")
        return self

    def aggregate_config(self) -> AggregateConfig:
        return AggregateConfig(
            window_s=self.feedback_bucket_s,
            retention_s=self.feedback_retention_s,
            max_tracked=self.feedback_max_tracked,
        )

    def trigger_policy(self) -> TriggerPolicy:
        return TriggerPolicy(
            min_corrections=self.feedback_min_corrections,
            max_thumbs_down_rate=self.feedback_thumbs_down_rate,
            min_rated=self.feedback_min_sample,
            rate_window_s=self.feedback_window_s,
            cooldown_s=self.feedback_cooldown_s,
        )
