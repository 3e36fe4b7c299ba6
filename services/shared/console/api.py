"""The public read API and the operator console, mounted by a Flywheel HTTP side (the canary control API).

Every fact the console shows comes from one of these endpoints (or the rollout and history endpoints
beside them), and `flywheel status` prints the same `StatusReport` from the same code. Reads are open,
like the rest of the control API's reads; the console's admin buttons call the token-protected rollout
actions. Redis and Kafka are read in threads (redis-py, kafka-python), and a model's ledger is kept for
`LEDGER_TTL_S` so a console polling every few seconds reads Kafka at most that often per model.
"""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import datetime
from importlib import resources
from typing import Annotated, Generic, TypeVar

import redis
from fastapi import APIRouter, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from events.envelope import Event
from services.shared import http_json
from services.shared.console.feedback import FeedbackSummary, read_feedback
from services.shared.console.ledger import (
    DatasetVersion,
    Ledger,
    RetrainingRun,
    ledgers_of,
    read_ledger_events,
)
from services.shared.console.overview import (
    ModelOverview,
    StatusReport,
    known_models,
    status_report,
    with_ledger,
)
from services.shared.console.overview import model_overview as overview_of
from services.shared.fleet import ReplicaStatus, read_fleet
from services.shared.identifiers import ModelName
from services.shared.kafka.history_reader import HistoryUnavailable
from services.shared.redis_store import RedisKeys
from services.shared.settings import FlywheelSettings

LEDGER_TTL_S = 3.0
T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="Items in the whole list.")
    offset: int
    limit: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last one.")


def page_of(items: list[T], offset: int, limit: int) -> Page[T]:
    end = offset + limit
    return Page(
        items=items[offset:end],
        total=len(items),
        offset=offset,
        limit=limit,
        next_offset=end if end < len(items) else None,
    )


class Fleet(BaseModel):
    replicas: list[ReplicaStatus]


class LedgerCache:
    """Every model's ledger events for `LEDGER_TTL_S`, read from Kafka once (at most one read at a time)
    for all the pages that ask; each page builds the ledger of its model from them."""

    def __init__(self, settings: FlywheelSettings) -> None:
        self._settings = settings
        self._events: list[Event] = []
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    async def _read(self) -> list[Event]:
        async with self._lock:
            if self._read_at is None or time.monotonic() - self._read_at >= LEDGER_TTL_S:
                try:
                    self._events = await asyncio.to_thread(read_ledger_events, self._settings)
                except HistoryUnavailable as exc:
                    raise HTTPException(503, detail=str(exc), headers={"Retry-After": "5"}) from exc
                self._read_at = time.monotonic()
            return self._events

    async def get(self, model: str | None) -> dict[str, Ledger]:
        """The ledger of `model` with its MLflow links, or of every model without them (the status)."""
        events = await self._read()
        return await asyncio.to_thread(ledgers_of, events, self._settings, model, model is not None)


Offset = Annotated[int, Query(ge=0, le=1_000_000)]
Limit = Annotated[int, Query(ge=1, le=500)]
UNAVAILABLE = http_json.documented({503: "Kafka cannot be read right now; retry."})


def console_router(settings: FlywheelSettings) -> APIRouter:
    router = APIRouter(tags=["read"])
    keys = RedisKeys(settings.redis_prefix)
    ledgers = LedgerCache(settings)

    @functools.cache
    def client() -> redis.Redis:  # on first use: building the app connects to nothing
        return redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=3)

    async def report() -> StatusReport:
        try:
            found, error = await ledgers.get(None), None
        except HTTPException as exc:
            found, error = None, str(exc.detail)
        return await asyncio.to_thread(status_report, client(), settings, found, error)

    @router.get("/v1/status", response_model=StatusReport)
    async def status() -> StatusReport:
        """Every model (aliases, what each replica serves, rollout, watch, feedback totals, latest dataset
        and retraining run) and the fleet: what `flywheel status --json` prints."""
        return await report()

    @router.get(
        "/v1/models/{model}", response_model=ModelOverview, responses={404: {"description": "Unknown."}}
    )
    async def model_overview(model: ModelName) -> ModelOverview:
        try:
            ledger: Ledger | None = (await ledgers.get(model)).get(model)
        except HTTPException:
            ledger = None  # the overview without its ledger rather than no overview

        def read() -> ModelOverview | None:
            if model not in known_models(client(), keys, settings) and ledger is None:
                return None
            fleet = read_fleet(client(), keys)
            return with_ledger(overview_of(client(), keys, settings, model, fleet), ledger)

        found = await asyncio.to_thread(read)
        if found is None:
            raise HTTPException(404, detail=f"Flywheel has seen no model {model!r}")
        return found

    @router.get("/v1/fleet", response_model=Fleet)
    async def fleet() -> Fleet:
        """Each gateway replica alive within the last heartbeats: versions per alias, reload errors,
        last swap."""
        return Fleet(replicas=await asyncio.to_thread(read_fleet, client(), keys))

    @router.get(
        "/v1/models/{model}/feedback",
        response_model=FeedbackSummary,
        responses={404: {"description": "No feedback or inference aggregated for the model yet."}},
    )
    async def feedback(
        model: ModelName,
        version: Annotated[str | None, Query(pattern=r"^[1-9][0-9]{0,9}$")] = None,
        since: Annotated[datetime | None, Query(description="RFC 3339; windows starting from then.")] = None,
    ) -> FeedbackSummary:
        """Counts and rates per version, totals and per window, and the retraining trigger's verdict."""
        if since is not None and since.tzinfo is None:
            raise HTTPException(422, detail="since must carry a timezone (RFC 3339)")
        summary = await asyncio.to_thread(read_feedback, client(), keys, model, version=version, since=since)
        if summary is None:
            raise HTTPException(404, detail=f"no feedback aggregated for model {model!r} yet")
        return summary

    @router.get("/v1/models/{model}/datasets", response_model=Page[DatasetVersion], responses=UNAVAILABLE)
    async def datasets(model: ModelName, offset: Offset = 0, limit: Limit = 50) -> Page[DatasetVersion]:
        """Dataset versions, newest first: rows, corrected rows, the manifest, the MLflow run."""
        ledger = (await ledgers.get(model)).get(model)
        return page_of(ledger.datasets if ledger else [], offset, limit)

    @router.get("/v1/models/{model}/retraining", response_model=Page[RetrainingRun], responses=UNAVAILABLE)
    async def retraining(model: ModelName, offset: Offset = 0, limit: Limit = 50) -> Page[RetrainingRun]:
        """Retraining runs, newest first: the trigger, each gate with its value, the outcome."""
        ledger = (await ledgers.get(model)).get(model)
        return page_of(ledger.retraining if ledger else [], offset, limit)

    return router


def mount_console(app: FastAPI, settings: FlywheelSettings) -> None:
    """The read API plus the console at /console (static files shipped in the package: no build)."""
    app.include_router(console_router(settings))
    static = resources.files("services.shared.console").joinpath("static")
    app.mount("/console/assets", StaticFiles(directory=str(static)), name="console-assets")

    @app.get("/console", response_class=HTMLResponse, include_in_schema=False)
    async def console_page() -> HTMLResponse:
        return HTMLResponse(static.joinpath("index.html").read_text())

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console")
