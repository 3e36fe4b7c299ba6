"""Retrainer configuration (environment variables with prefix FLYWHEEL_, see README)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.retrainer.domain.gates import GateThresholds
from services.shared.fields import (
    consumer_group_field,
    count_field,
    metrics_host_field,
    metrics_port_field,
    positive_field,
    probability_field,
    share_field,
    worker_port_field,
)
from services.shared.settings import FlywheelSettings


class RetrainerSettings(FlywheelSettings):
    retrainer_min_accuracy: float = share_field(0.8, "Accuracy gate: held-out accuracy at or above this.")
    retrainer_max_regression: float = share_field(
        0.02, "Regression gate: accuracy may fall at most this below the champion."
    )
    retrainer_max_p95_ms: float = positive_field(
        250.0, "Latency ceiling gate: p95 of single-request inference latency, ms (a production SLO)."
    )
    retrainer_max_p95_ratio: float = positive_field(
        1.5, "Latency ratio gate: candidate p95 / champion p95, timed side by side on the same rows."
    )
    retrainer_max_p95_delta_ms: float = positive_field(
        5.0,
        "The ratio gate fails only when the p95s also differ by more than this many ms.",
        zero_allowed=True,
    )
    retrainer_group_id: str = consumer_group_field("flywheel-retrainer")
    retrainer_web_port: int = worker_port_field(6074)
    retrainer_metrics_host: str = metrics_host_field()
    retrainer_metrics_port: int = metrics_port_field()
    retrainer_experiment: str = Field(
        default="flywheel/retrainer", min_length=1, description="MLflow experiment of the training runs."
    )
    retrainer_dataset_artifact_path: str = Field(
        default="dataset", min_length=1, description="Artifact path of the dataset files in the dataset run."
    )
    retrainer_max_attempts: int = count_field(
        5,
        "Attempts at a request failing for other reasons than its data or training (MLflow "
        "unreachable, ...) before its failure is recorded and the worker moves on.",
    )
    retrainer_retry_initial_s: float = positive_field(1.0, "First back-off; doubles.")
    retrainer_retry_max_s: float = positive_field(30.0, "Longest back-off.")

    # scikit-learn models
    retrainer_algorithm: Literal["logistic_regression", "base"] = Field(
        default="logistic_regression",
        description="'logistic_regression' (standardised features); 'base' refits a clone of the base "
        "version's estimator.",
    )
    retrainer_c: float = positive_field(1.0, "Inverse regularisation of logistic regression.")
    retrainer_max_iter: int = count_field(2000)
    retrainer_base_data: str = Field(
        default="services.cli.devstack.sample_models:wine_data",
        description="'module:function' returning the base training data and held-out set "
        "(attributes train_x, train_y, test_x, test_y).",
    )
    retrainer_latency_samples: int = count_field(200, "Held-out rows timed one by one for the latency gate.")
    retrainer_latency_repeats: int = count_field(
        3,
        "Times each row is timed per model (interleaved); the median counts, so one load spike does not "
        "decide the tail.",
    )

    # DSPy programs
    retrainer_dspy_optimizer: Literal["bootstrap_few_shot", "labeled_few_shot"] = "bootstrap_few_shot"
    retrainer_dspy_max_demos: int = count_field(4, "Few-shot demos per predictor.")
    retrainer_dspy_holdout_fraction: float = probability_field(
        0.3, "Share of the dataset kept for evaluation (by request id)."
    )
    retrainer_dspy_lm: str | None = Field(
        default=None,
        description="LM for compiling and evaluating DSPy programs (e.g. 'openai/gpt-4o-mini'); unset = "
        "the LM saved with the base version.",
    )

    def thresholds(self) -> GateThresholds:
        return GateThresholds(
            min_accuracy=self.retrainer_min_accuracy,
            max_p95_latency_ms=self.retrainer_max_p95_ms,
            max_regression=self.retrainer_max_regression,
            max_p95_latency_ratio=self.retrainer_max_p95_ratio,
            max_p95_latency_delta_ms=self.retrainer_max_p95_delta_ms,
        )
