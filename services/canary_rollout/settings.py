"""Canary rollout configuration (environment variables with prefix FLYWHEEL_, see README)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from services.canary_rollout.domain.policy import DEFAULT_WEIGHTS, AnalysisMode, RolloutPolicy, Spending
from services.shared.carry import carry
from services.shared.fields import (
    consumer_group_field,
    count_field,
    port_field,
    positive_field,
    probability_field,
    share_field,
    worker_port_field,
)
from services.shared.settings import FlywheelSettings


class CanarySettings(FlywheelSettings):
    admin_token: SecretStr | None = Field(
        default=None, description="FLYWHEEL_ADMIN_TOKEN: Bearer token of the admin actions; unset = disabled."
    )
    canary_host: str = "127.0.0.1"
    canary_port: int = port_field(8090, "Control API and dashboard.")
    canary_web_port: int = worker_port_field(6071, "Port the Faust worker binds.")
    canary_group_id: str = consumer_group_field("flywheel-canary-rollout", description=None)
    canary_tick_s: float = positive_field(1.0, "How often rollouts are evaluated.")
    previous_champion_alias: str = Field(default="previous-champion", min_length=1)
    canary_weights: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_WEIGHTS, description="Challenger share per step in percent, comma-separated."
    )
    canary_step_interval_s: float = positive_field(300.0, zero_allowed=True)
    canary_check_interval_s: float = positive_field(60.0, zero_allowed=True)
    canary_min_samples: int = count_field(200, "Inferences per variant per step.")
    canary_max_error_rate_delta: float = share_field(0.02)
    canary_max_p95_latency_ratio: float = Field(default=1.25, ge=1)
    canary_max_p95_latency_delta_ms: float = positive_field(5.0, zero_allowed=True)
    canary_min_thumbs_up_delta: float = share_field(0.05)
    canary_min_feedback: int = count_field(30)
    canary_alpha: float = probability_field(0.05)
    canary_max_failed_checks: int = count_field(3, "Fixed analysis only.")
    canary_analysis: AnalysisMode = Field(
        default="sequential", description="sequential (anytime-valid, default) or fixed (per-step checks)."
    )
    canary_false_promotion_rate: float = probability_field(0.05)
    canary_sequential_horizon: int = count_field(4000, "Effective inferences per variant.")
    canary_sequential_feedback_horizon: int = count_field(3000, "Effective ratings per variant.")
    canary_spending: Spending = "obrien_fleming"
    canary_shadow_samples: int = count_field(200, "Shadow step answers; 0 = no shadow step.", minimum=0)
    canary_shadow_share: float = Field(default=0.1, gt=0, le=1)
    canary_min_shadow_agreement: float = share_field(0.5)
    canary_watch_s: float = positive_field(600.0, "Post-promotion watch; 0 = off.", zero_allowed=True)

    @field_validator("canary_weights", mode="before")
    @classmethod
    def _weights_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(float(v) for v in value.split(",") if v.strip())
        return value

    def policy(self) -> RolloutPolicy:
        """The rollout policy from the `canary_*` settings named like its fields (defaults for the rest)."""
        return carry(self, RolloutPolicy, prefix="canary_", min_samples_per_variant=self.canary_min_samples)
