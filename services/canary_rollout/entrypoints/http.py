"""Control API of the canary rollout service (DESIGN.md "canary control"), with the public read API and
the operator console mounted beside it (`services/shared/console/`).

Reads are open; admin actions (promote, abort, pause, resume) need `Authorization: Bearer
$FLYWHEEL_ADMIN_TOKEN` (401 without or with a wrong token; 403 while no token is configured, so an
unconfigured service cannot be driven by anyone). The token is checked before the body is read. An
action that does not apply to the rollout's state answers 409 naming the state.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from services.canary_rollout.domain import InvalidTransition
from services.canary_rollout.handlers import ADMIN_ACTIONS, RolloutService
from services.shared import http_json
from services.shared.console.api import Limit, Offset, Page, mount_console, page_of
from services.shared.history_api import history_router
from services.shared.http_ops import add_ops_routes, service_app
from services.shared.identifiers import ModelName


class AdminAction(BaseModel):
    reason: str | None = Field(default=None, max_length=500)
    actor: str | None = Field(default=None, max_length=200, description="Who acts (default: admin).")


def create_api(service: RolloutService, ready: Callable[[], bool] = lambda: True) -> FastAPI:
    """The control API; `ready` says whether the worker behind it consumes (its /readyz)."""
    app = service_app("Flywheel canary rollout", "0.1.0")

    async def worker_ready() -> bool:
        return ready()

    add_ops_routes(app, lambda: {"worker": worker_ready})

    async def require_admin(request: Request) -> None:
        """Runs before the body is read (authorized_routes): no token, no validation feedback."""
        token = service.settings.admin_token
        if token is None:
            raise HTTPException(403, detail="admin actions are disabled: FLYWHEEL_ADMIN_TOKEN is not set")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.encode("utf-8", "surrogateescape"), token.get_secret_value().encode()
        ):
            raise HTTPException(
                401, detail="missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    admin = APIRouter(route_class=http_json.authorized_routes(require_admin))

    @app.get("/v1/rollouts", tags=["canary"])
    async def list_rollouts() -> dict[str, Any]:
        views = [
            v for m in sorted(await service.store.models()) if (v := await service.view_of(m)) is not None
        ]
        return {"rollouts": views}

    @app.get("/v1/rollouts/{model}", tags=["canary"], responses={404: {"description": "No rollout."}})
    async def get_rollout(model: ModelName) -> dict[str, Any]:
        view = await service.view_of(model)
        if view is None:
            raise HTTPException(404, detail=f"no rollout for model {model!r}")
        decisions = await service.store.decisions(model)
        view["decisions"] = [
            d.model_dump(mode="json") for d in decisions if d.rollout_id == view["rollout_id"]
        ]
        split = await service.store.split(model)
        view["traffic_split"] = split.model_dump(mode="json") if split else None
        view["decided_here"] = service.owns(model)  # this instance owns the model's partition now
        return view

    @app.get(
        "/v1/rollouts/{model}/decisions",
        tags=["canary"],
        response_model=Page[dict[str, Any]],
        responses={404: {"description": "No decision recorded for the model."}},
    )
    async def list_decisions(
        model: ModelName,
        rollout_id: Annotated[str | None, Query(max_length=128, description="Only this rollout's.")] = None,
        offset: Offset = 0,
        limit: Limit = 50,
    ) -> Page[dict[str, Any]]:
        """The model's decisions across rollouts, newest first, each with the evidence it was based on
        (the last 500 per model are kept; the Kafka record and /history hold all of them)."""
        decisions = await service.store.decisions(model)
        if not decisions:
            raise HTTPException(404, detail=f"no decisions recorded for model {model!r}")
        found = [
            d.model_dump(mode="json")
            for d in reversed(decisions)
            if rollout_id is None or d.rollout_id == rollout_id
        ]
        return page_of(found, offset, limit)

    @admin.post(
        "/v1/rollouts/{model}/{action}",
        tags=["canary"],
        responses=http_json.documented(
            {
                401: "Missing or invalid bearer token (checked before anything else).",
                403: "Admin actions are disabled (no FLYWHEEL_ADMIN_TOKEN).",
                404: "Unknown action, or no rollout for the model.",
                409: "The action does not apply to the rollout's state.",
                503: "No instance owns the model right now (a rebalance); retry.",
            }
        ),
    )
    async def act(model: ModelName, action: str, body: AdminAction | None = None) -> dict[str, Any]:
        if action not in ADMIN_ACTIONS:
            raise HTTPException(
                404, detail=f"unknown action {action!r}; expected one of {', '.join(ADMIN_ACTIONS)}"
            )
        if await service.view_of(model) is None:
            raise HTTPException(404, detail=f"no rollout for model {model!r}")
        body = body or AdminAction()
        try:
            decisions = await service.submit(model, action, body.actor or "admin", body.reason)
        except InvalidTransition as exc:
            raise HTTPException(409, detail=str(exc)) from exc
        except TimeoutError as exc:
            raise HTTPException(503, detail=str(exc), headers={"Retry-After": "5"}) from exc
        return {"decisions": decisions, "rollout": await service.view_of(model)}

    app.include_router(admin)
    settings = service.settings
    app.include_router(history_router(settings.kafka_bootstrap_servers, settings.kafka_profile))

    mount_console(app, settings)

    @app.get("/rollouts", include_in_schema=False)
    async def dashboard() -> RedirectResponse:
        """The former rollout page; the console shows rollouts with everything around them."""
        return RedirectResponse("/console")

    return app
