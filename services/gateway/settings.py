"""Gateway configuration (environment variables, see README)."""

from __future__ import annotations

import socket

from pydantic import Field, SecretStr

from services.gateway.domain.feedback_token import FeedbackTokens
from services.shared.fields import count_field, port_field, positive_field, share_field
from services.shared.settings import FlywheelSettings


class GatewaySettings(FlywheelSettings):
    gateway_host: str = "127.0.0.1"
    gateway_port: int = port_field(8080)
    replica_id: str | None = Field(
        default=None, description="Name of this replica in events and metrics; default host:port."
    )
    advertised_url: str | None = Field(
        default=None,
        description="URL the fleet view shows for this replica; default http://host:port (the machine's "
        "hostname when bound to a wildcard address).",
    )
    model_cache_size: int = count_field(8, "Loaded model versions kept per replica.")
    model_ttl_s: float | None = Field(
        default=None, gt=0, description="Reload loaded versions after this age; unset = never."
    )
    reconcile_interval_s: float = positive_field(5.0, "Safety net: re-read the resolution cache this often.")
    reload_retry_initial_s: float = positive_field(0.5)
    reload_retry_max_s: float = positive_field(30.0)
    max_batch_rows: int = count_field(1000, "Rows accepted per predict request.")
    shadow_max_in_flight: int = count_field(
        1, "Mirrored challenger calls at once per replica in a shadow step (more requests are not mirrored)."
    )
    tracing_enabled: bool = Field(
        default=True,
        description="MLflow traces of the sampled, failed and rated predictions (every response carries "
        "its trace id either way).",
    )
    trace_sample: float = share_field(
        0.01,
        "Share of predictions whose trace is written as they are served; errors are always traced, and a "
        "rated prediction's trace is written when it is rated.",
    )
    trace_experiment: str = Field(default="flywheel/serving", min_length=1)
    batch_max_rows: int = count_field(
        256, "Rows per model call when concurrent requests to one version are predicted together."
    )
    batch_wait_ms: float = positive_field(
        2.0,
        "Longest a batch is held open for requests known to be on their way (never when none is); "
        "0 = no micro-batching.",
        zero_allowed=True,
    )
    inline_predict_max_ms: float = positive_field(
        5.0,
        "Batches of a version that take longer than this run on a worker thread instead of the event loop.",
        zero_allowed=True,
    )
    inference_events_enabled: bool = True
    inference_queue_size: int = count_field(10_000)
    inference_batch_size: int = count_field(200)
    inference_linger_ms: int = count_field(
        20,
        "Gather inference events this long before handing them to the event relay (one hand-off and one "
        "produce request per batch).",
        minimum=0,
    )
    pandas_object_strings: bool = Field(
        default=True,
        description="Build pandas string labels as Python objects (pandas 2's way) in the gateway process: "
        "pandas 3's Arrow strings cost ~28% of a one-record sklearn predict (feature-name checks). No "
        "effect once pandas removes the switch (4.0).",
    )
    max_logged_payload_bytes: int = count_field(
        16_384, "Inputs/outputs larger than this are not copied into events.", minimum=0
    )
    request_log_ttl_s: int = count_field(
        7 * 24 * 3600, "How long served requests can receive feedback.", minimum=60
    )
    feedback_secret: SecretStr | None = Field(
        default=None,
        description="HMAC secret of feedback tokens (the same on every replica); unset = no tokens issued, "
        "and feedback is refused unless FLYWHEEL_FEEDBACK_OPEN=true.",
    )
    feedback_open: bool = Field(
        default=False,
        description="Accept feedback without a valid token (anyone who can call the endpoint can then write "
        "into the training data).",
    )
    feedback_rate_per_minute: int = count_field(
        60, "Feedback submissions per user id (or anonymous) per minute; 0 = no limit.", minimum=0
    )
    dspy_lm: str | None = Field(
        default=None,
        description="LiteLLM model string for DSPy programs (e.g. openai/gpt-4o-mini); 'dummy' for tests.",
    )
    dspy_api_key: SecretStr | None = Field(default=None, description="API key passed to the DSPy LM.")
    dspy_api_base: str | None = None

    def feedback_tokens(self) -> FeedbackTokens | None:
        if self.feedback_secret is None:
            return None
        return FeedbackTokens(self.feedback_secret.get_secret_value().encode(), self.request_log_ttl_s)

    def replica_url(self) -> str:
        if self.advertised_url:
            return self.advertised_url
        wildcard = self.gateway_host in ("0.0.0.0", "::", "")
        return f"http://{socket.gethostname() if wildcard else self.gateway_host}:{self.gateway_port}"

    def replica_name(self) -> str:
        return self.replica_id or f"{socket.gethostname()}:{self.gateway_port}"
