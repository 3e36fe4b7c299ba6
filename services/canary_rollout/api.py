"""Control API and dashboard of the canary rollout service (DESIGN.md "canary control").

Reads are open; admin actions (promote, abort, pause, resume) need `Authorization: Bearer
$FLYWHEEL_ADMIN_TOKEN` (401 without or with a wrong token; 503 while no token is configured, so an
unconfigured service cannot be driven by anyone). An action that does not apply to the rollout's state
answers 409 naming the state.
"""

from __future__ import annotations

import secrets
from importlib import resources
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from services.canary_rollout.core import InvalidTransition
from services.canary_rollout.service import ADMIN_ACTIONS, RolloutService
from services.shared.http_ops import add_ops_routes


class AdminAction(BaseModel):
    reason: str | None = Field(default=None, max_length=500)
    actor: str | None = Field(default=None, max_length=200, description="Who acts (default: admin).")


def create_api(service: RolloutService) -> FastAPI:
    app = FastAPI(title="Flywheel canary rollout", version="0.1.0")

    async def ready() -> bool:
        return True

    add_ops_routes(app, lambda: {"worker": ready})

    def require_admin(authorization: str | None) -> None:
        token = service.settings.admin_token
        if token is None:
            raise HTTPException(503, detail="admin actions are disabled: FLYWHEEL_ADMIN_TOKEN is not set")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.encode(), token.get_secret_value().encode()
        ):
            raise HTTPException(
                401, detail="missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.get("/v1/rollouts", tags=["canary"])
    async def list_rollouts() -> dict[str, Any]:
        views = [v for m in sorted(service.machines) if (v := service.view(m)) is not None]
        return {"rollouts": views}

    @app.get("/v1/rollouts/{model}", tags=["canary"])
    async def get_rollout(model: str) -> dict[str, Any]:
        view = service.view(model)
        if view is None:
            raise HTTPException(404, detail=f"no rollout for model {model!r}")
        decisions = await service.store.decisions(model)
        view["decisions"] = [
            d.model_dump(mode="json") for d in decisions if d.rollout_id == view["rollout_id"]
        ]
        split = await service.store.split(model)
        view["traffic_split"] = split.model_dump(mode="json") if split else None
        return view

    @app.post("/v1/rollouts/{model}/{action}", tags=["canary"])
    async def act(
        model: str,
        action: str,
        body: AdminAction | None = None,
        authorization: str | None = Header(default=None),
    ) -> dict[str, Any]:
        if action not in ADMIN_ACTIONS:
            raise HTTPException(
                404, detail=f"unknown action {action!r}; expected one of {', '.join(ADMIN_ACTIONS)}"
            )
        require_admin(authorization)
        if service.view(model) is None:
            raise HTTPException(404, detail=f"no rollout for model {model!r}")
        body = body or AdminAction()
        try:
            outcome = await service.admin(model, action, body.actor or "admin", body.reason)
        except InvalidTransition as exc:
            raise HTTPException(409, detail=str(exc)) from exc
        return {
            "decisions": [d.model_dump(mode="json") for d in outcome.decisions],
            "rollout": service.view(model),
        }

    @app.get("/rollouts", response_class=HTMLResponse, tags=["canary"])
    async def dashboard() -> HTMLResponse:
        html = resources.files("services.canary_rollout").joinpath("templates/dashboard.html").read_text()
        return HTMLResponse(html)

    return app
