"""Route dependencies the HTTP services share.

Each service builds its parts once per process in the lifespan and stores them on `app.state`; routes
receive them through an `Annotated[..., Depends(from_app_state(name))]` alias (FastAPI full-stack
template style), so a test can build the app with other parts and no route reaches for a global.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request


def from_app_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency returning `app.state.<name>` (set by the lifespan before the first request).

    `async`, because FastAPI runs a plain `def` dependency on its thread pool: a thread hop on every
    request for one attribute read."""

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    dependency.__name__ = f"get_{name}"
    return dependency
