"""Canary rollout configuration (environment variables with prefix FLYWHEEL_, see README)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from services.canary_rollout.domain.policy import DEFAULT_WEIGHTS, RolloutPolicy
from services.shared.settings import FlywheelSettings


class CanarySettings(FlywheelSettings):
    admin_token: SecretStr | None = Field(
        default=None, description="FLYWHEEL_ADMIN_TOKEN: Bearer token of the admin actions; unset = disabled."
    )
    canary_host: str = "127.0.0.1"
    canary_port: int = Field(default=8090, ge=1, le=65535, description="Control API and dashboard.")
    canary_web_port: int = Field(default=6071, ge=1, le=65535, description="Port the Faust worker binds.")
    canary_group_id: str = Field(default="flywheel-canary-rollout", min_length=1)
    canary_tick_s: float = Field(default=1.0, gt=0, description="How often rollouts are evaluated.")
    previous_champion_alias: str = Field(default="previous-champion", min_length=1)
    canary_weights: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_WEIGHTS, description="Challenger share per step in percent, comma-separated."
    )
    canary_step_interval_s: float = Field(default=300.0, ge=0)
    canary_check_interval_s: float = Field(default=60.0, ge=0)
    canary_min_samples: int = Field(default=200, ge=1, description="Inferences per variant per step.")
    canary_max_error_rate_delta: float = Field(default=0.02, ge=0, le=1)
    canary_max_p95_latency_ratio: float = Field(default=1.25, ge=1)
    canary_max_p95_latency_delta_ms: float = Field(default=5.0, ge=0)
    canary_min_thumbs_up_delta: float = Field(default=0.05, ge=0, le=1)
    canary_min_feedback: int = Field(default=30, ge=1)
    canary_alpha: float = Field(default=0.05, gt=0, lt=1)
    canary_max_failed_checks: int = Field(default=3, ge=1)

    @field_validator("canary_weights", mode="before")
    @classmethod
    def _weights_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(float(v) for v in value.split(",") if v.strip())
        return value

    def policy(self) -> RolloutPolicy:
        return RolloutPolicy(
            weights=self.canary_weights,
            step_interval_s=self.canary_step_interval_s,
            check_interval_s=self.canary_check_interval_s,
            min_samples_per_variant=self.canary_min_samples,
            max_error_rate_delta=self.canary_max_error_rate_delta,
            max_p95_latency_ratio=self.canary_max_p95_latency_ratio,
            max_p95_latency_delta_ms=self.canary_max_p95_latency_delta_ms,
            min_thumbs_up_delta=self.canary_min_thumbs_up_delta,
            min_feedback=self.canary_min_feedback,
            alpha=self.canary_alpha,
            max_failed_checks=self.canary_max_failed_checks,
        )
