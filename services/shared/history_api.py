"""`GET /v1/models/{model}/history`: what was live when, served by any Flywheel HTTP side that mounts it
(the canary control API does). Reads the topics on each call (`kafka/history_reader.py`)."""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from services.shared import http_json
from services.shared.alias_history import History
from services.shared.identifiers import ModelName
from services.shared.kafka.history_reader import HistoryUnavailable, read_history


def history_router(bootstrap_servers: str, profile: str) -> APIRouter:
    router = APIRouter(tags=["history"])

    @router.get(
        "/v1/models/{model}/history",
        response_model=History,
        responses=http_json.documented({503: "Kafka cannot be read right now; retry."}),
    )
    async def history(
        model: ModelName,
        since: Annotated[datetime | None, Query(description="RFC 3339; from this time on.")] = None,
        until: Annotated[datetime | None, Query(description="RFC 3339; up to this time.")] = None,
        holds: Annotated[bool, Query(description="Include the canary's hold decisions.")] = True,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> History:
        """Every alias change (source, and who moved it where Flywheel knows) and canary decision."""
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise HTTPException(422, detail=f"{name} must carry a timezone (RFC 3339)")
        if since is not None and until is not None and until < since:
            raise HTTPException(422, detail="until must not be before since")
        try:
            read = functools.partial(read_history, profile=profile, holds=holds, limit=limit)
            return await asyncio.to_thread(read, bootstrap_servers, model, since, until)
        except HistoryUnavailable as exc:
            raise HTTPException(503, detail=str(exc), headers={"Retry-After": "5"}) from exc

    return router
