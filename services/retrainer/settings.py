"""Retrainer configuration (environment variables with prefix FLYWHEEL_, see README)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.retrainer.domain.gates import GateThresholds
from services.shared.settings import FlywheelSettings


class RetrainerSettings(FlywheelSettings):
    retrainer_min_accuracy: float = Field(
        default=0.8, ge=0, le=1, description="Accuracy gate: held-out accuracy at or above this."
    )
    retrainer_max_regression: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Regression gate: accuracy may fall at most this below the champion.",
    )
    retrainer_max_p95_ms: float = Field(
        default=250.0,
        gt=0,
        description="Latency ceiling gate: p95 of single-request inference latency, ms (a production SLO).",
    )
    retrainer_max_p95_ratio: float = Field(
        default=1.5,
        gt=0,
        description="Latency ratio gate: candidate p95 / champion p95, timed side by side on the same rows.",
    )
    retrainer_max_p95_delta_ms: float = Field(
        default=5.0,
        ge=0,
        description="The ratio gate fails only when the p95s also differ by more than this many ms.",
    )
    retrainer_group_id: str = Field(
        default="flywheel-retrainer",
        min_length=1,
        description="Kafka consumer group (= Faust app id); a new id replays the topic from the start.",
    )
    retrainer_web_port: int = Field(
        default=6074,
        ge=1,
        le=65535,
        description="Port the Faust worker binds (web server off, bound anyway).",
    )
    retrainer_metrics_host: str = Field(default="127.0.0.1", description="Bind address of /metrics.")
    retrainer_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus /metrics port; 0 = not served."
    )
    retrainer_experiment: str = Field(
        default="flywheel/retrainer", min_length=1, description="MLflow experiment of the training runs."
    )
    retrainer_dataset_artifact_path: str = Field(
        default="dataset", min_length=1, description="Artifact path of the dataset files in the dataset run."
    )
    retrainer_max_attempts: int = Field(
        default=5,
        ge=1,
        description="Attempts at a request failing for other reasons than its data or training (MLflow "
        "unreachable, ...) before its failure is recorded and the worker moves on.",
    )
    retrainer_retry_initial_s: float = Field(default=1.0, gt=0, description="First back-off; doubles.")
    retrainer_retry_max_s: float = Field(default=30.0, gt=0, description="Longest back-off.")

    # scikit-learn models
    retrainer_algorithm: Literal["logistic_regression", "base"] = Field(
        default="logistic_regression",
        description="'logistic_regression' (standardised features); 'base' refits a clone of the base "
        "version's estimator.",
    )
    retrainer_c: float = Field(
        default=1.0, gt=0, description="Inverse regularisation of logistic regression."
    )
    retrainer_max_iter: int = Field(default=2000, ge=1)
    retrainer_base_data: str = Field(
        default="services.cli.devstack.sample_models:wine_data",
        description="'module:function' returning the base training data and held-out set "
        "(attributes train_x, train_y, test_x, test_y).",
    )
    retrainer_latency_samples: int = Field(
        default=200, ge=1, description="Held-out rows timed one by one for the latency gate."
    )
    retrainer_latency_repeats: int = Field(
        default=3,
        ge=1,
        description="Times each row is timed per model (interleaved); the median counts, so one load "
        "spike does not decide the tail.",
    )

    # DSPy programs
    retrainer_dspy_optimizer: Literal["bootstrap_few_shot", "labeled_few_shot"] = "bootstrap_few_shot"
    retrainer_dspy_max_demos: int = Field(default=4, ge=1, description="Few-shot demos per predictor.")
    retrainer_dspy_holdout_fraction: float = Field(
        default=0.3, gt=0, lt=1, description="Share of the dataset kept for evaluation (by request id)."
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
