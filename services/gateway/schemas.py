"""Request and response bodies of the gateway's HTTP API (DESIGN.md, "HTTP interfaces")."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: JsonValue = Field(description="One record, a list of records, or columns.")
    params: dict[str, JsonValue] | None = Field(default=None, description="Inference parameters.")
    user_id: str | None = Field(default=None, min_length=1, max_length=200)


class PredictResponse(BaseModel):
    outputs: Any
    model: str
    version: str
    alias: str | None
    variant: str
    request_id: str
    trace_id: str | None
