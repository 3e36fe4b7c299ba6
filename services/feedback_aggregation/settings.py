"""Feedback aggregation configuration (environment variables with prefix FLYWHEEL_, see README)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field, model_validator

from services.feedback_aggregation.domain.aggregates import AggregateConfig
from services.feedback_aggregation.domain.triggers import TriggerPolicy
from services.shared.settings import FlywheelSettings


def _default_dataset_dir() -> Path:
    return Path(tempfile.gettempdir()) / "flywheel-datasets"


class FeedbackSettings(FlywheelSettings):
    feedback_group_id: str = Field(
        default="flywheel-feedback-aggregation",
        min_length=1,
        description="Kafka consumer group (= Faust app id). A new id re-reads the topics from the start; "
        "events already applied under the same Redis prefix are recognised by offset and skipped.",
    )
    feedback_web_port: int = Field(
        default=6072,
        ge=1,
        le=65535,
        description="Port the Faust worker binds (web server off, bound anyway).",
    )
    feedback_metrics_host: str = Field(default="127.0.0.1", description="Bind address of /metrics.")
    feedback_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus /metrics port; 0 = not served."
    )

    # retraining trigger policy (core.triggers)
    feedback_min_corrections: int = Field(
        default=20, ge=1, description="Corrections since the last trigger that request a retraining."
    )
    feedback_thumbs_down_rate: float = Field(
        default=0.3,
        ge=0,
        lt=1,
        description="Thumbs-down share of ratings in the window above which to retrain.",
    )
    feedback_min_sample: int = Field(
        default=30, ge=1, description="Ratings in the window needed before the thumbs-down rate counts."
    )
    feedback_window_s: int = Field(default=600, ge=1, description="Window of the thumbs-down rate, seconds.")
    feedback_cooldown_s: int = Field(
        default=600, ge=0, description="No new trigger for this long after one (seconds)."
    )

    # aggregates (core.aggregates)
    feedback_bucket_s: int = Field(default=60, ge=1, description="Tumbling window of the counts, seconds.")
    feedback_retention_s: int = Field(
        default=6 * 3600, ge=1, description="How long windows (and dedup ids) are kept, seconds."
    )
    feedback_max_tracked: int = Field(
        default=50_000, ge=1, description="Dedup ids kept per (model, version); see core.aggregates."
    )

    # persistence and publication
    feedback_snapshot_every: int = Field(
        default=500,
        ge=1,
        description="Events journaled per model before the aggregates are snapshotted (restart replays at "
        "most this many).",
    )
    feedback_buffer_max: int = Field(
        default=200_000,
        ge=1,
        description="Feedback events buffered per model for the next dataset (newest kept).",
    )
    feedback_batch_max: int = Field(
        default=500,
        ge=1,
        description="Most events one agent applies and persists in one batch (one Redis write).",
    )
    feedback_batch_within_ms: int = Field(
        default=5,
        ge=0,
        description="How long a batch waits for more events when none is queued, milliseconds, counted "
        "from its first event (the most an event waits for company; 0 = apply what is queued at once).",
    )
    feedback_summary_interval_ms: int = Field(
        default=50,
        ge=0,
        description="A model's summary is written at most this often, milliseconds (the last one of a "
        "burst at most this late); 0 = with every batch.",
    )
    feedback_tick_s: float = Field(
        default=5.0, gt=0, description="How often triggers are re-evaluated without new events (cooldowns)."
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
