"""Configuration common to every service, read from the environment with pydantic-settings.

Each service defines one settings class that extends `FlywheelSettings` with its own fields, so a
service reads all of its configuration from a single object. Secrets are `SecretStr` and URLs are
redacted before they are logged.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KafkaProfileName = Literal["standard", "embedded"]


def redact_url(url: str) -> str:
    """`scheme://user:secret@host/db` -> `scheme://user:***@host/db`: safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class FlywheelSettings(BaseSettings):
    """Fields every service shares: where MLflow, Kafka and Redis are, and the alias names."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore", case_sensitive=False)

    mlflow_tracking_uri: str = Field(
        default="http://127.0.0.1:5000",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "mlflow_tracking_uri"),
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
    )
    kafka_profile: KafkaProfileName = Field(
        default="standard",
        description="'standard' for Apache Kafka; 'embedded' applies the Tansu broker workarounds.",
    )
    kafka_partitions: int = Field(
        default=6,
        ge=1,
        le=1000,
        description="Partitions of Flywheel's topics when they are created (the key is the model name, so "
        "this bounds how many instances of a worker share the work).",
    )
    kafka_replication_factor: int = Field(
        default=1, ge=1, le=10, description="Replication factor of created topics (3 on a 3-broker cluster)."
    )
    redis_prefix: str = Field(default="flywheel", min_length=1, description="Namespace of Redis keys.")
    champion_alias: str = Field(default="champion", min_length=1)
    challenger_alias: str = Field(default="challenger", min_length=1)
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Registered models to watch (comma-separated); empty = all."
    )
    log_level: str = Field(default="INFO")
    mlflow_ui_url: str | None = Field(
        default=None,
        description="MLflow UI that the console links to; default the tracking URI when it is http(s).",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _models_csv(cls, value: object) -> object:
        return _split_csv(value)

    def mlflow_ui(self) -> str | None:
        url = self.mlflow_ui_url or self.mlflow_tracking_uri
        return redact_url(url).rstrip("/") if url.startswith(("http://", "https://")) else None

    def watches(self, model: str) -> bool:
        return not self.models or model in self.models

    def safe_summary(self) -> dict[str, object]:
        """Settings with secrets masked and URLs redacted, for start-up logs."""
        summary: dict[str, object] = {}
        for name, value in self.model_dump().items():
            field = type(self).model_fields[name]
            if field.annotation is not None and "SecretStr" in str(field.annotation):
                summary[name] = "***" if value else None
            elif isinstance(value, str) and "://" in value:
                summary[name] = redact_url(value)
            else:
                summary[name] = value
        return summary
