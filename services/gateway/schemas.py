"""Request and response bodies of the gateway's HTTP API (DESIGN.md, "HTTP interfaces")."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from events import FeedbackRating
from services.shared.identifiers import REQUEST_ID_PATTERN, TRACE_ID_PATTERN


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
    feedback_token: str | None = Field(
        default=None, description="Send it with feedback on this prediction (from the same user_id)."
    )


MAX_COMMENT = 2000
MAX_CORRECTION_BYTES = 16_384


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(
        default=None, pattern=REQUEST_ID_PATTERN, description="`request_id` of the predict response."
    )
    trace_id: str | None = Field(
        default=None, pattern=TRACE_ID_PATTERN, description="`trace_id` of the predict response."
    )
    feedback_token: str | None = Field(
        default=None, max_length=1024, description="`feedback_token` of the predict response."
    )
    rating: FeedbackRating
    corrected_output: JsonValue = None
    comment: str | None = Field(default=None, max_length=MAX_COMMENT)
    user_id: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("corrected_output")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if value is not None and len(json.dumps(value)) > MAX_CORRECTION_BYTES:
            raise ValueError(f"corrected_output is larger than {MAX_CORRECTION_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _one_reference(self) -> FeedbackRequest:
        if self.request_id is None and self.trace_id is None:
            raise ValueError("request_id or trace_id is required")
        return self
