"""One JSON policy for every Flywheel HTTP surface, and error bodies that always render.

Python's `json` accepts what JSON tools downstream do not: `NaN`/`Infinity`, lone UTF-16 surrogates
(`"\\ud800"` decodes to a `str` that cannot be encoded as UTF-8), integers of any length, and nesting
deep enough to exhaust the interpreter's recursion limit. Accepted once, such a value travels on: into a
Kafka event that cannot be encoded (and stops the publisher), into a Redis write, into an error message
that cannot be rendered (a 500). So every request body is checked here, once, before any route sees it:

- the body is at most `max_body_bytes` (413), is JSON (400), nests at most `max_depth` levels (422);
- strings hold no lone surrogate, numbers are finite, integers fit in 64 bits — each refused with 422
  naming the field (`body.inputs[3].alcohol`), in FastAPI's own error format.

`JsonPolicyRoute` is the route class that applies it; `install(app)` sets it and the exception handlers
that render any error safely: the offending input is never echoed back raw (surrogates are escaped,
non-finite numbers become strings), so rendering an error can no longer fail. Admin routes use
`authorized_routes(check)`: a route class whose `check` runs *before* the body is read or validated, so
a caller without a valid token learns nothing from validation errors (401 first, always).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_BODY_CHECKED = "flywheel_json_checked"


class JsonPolicyError(ValueError):
    def __init__(self, loc: tuple[str | int, ...], kind: str, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.kind = kind
        self.message = message

    def as_validation_error(self) -> RequestValidationError:
        return RequestValidationError([{"type": self.kind, "loc": ("body", *self.loc), "msg": self.message}])


def has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def loads(body: bytes | str) -> Any:
    """`json.loads`; RecursionError becomes a policy error. `NaN`/`Infinity` (not JSON, accepted by
    Python) parse to non-finite floats here so that `check` can name the field that holds them."""
    try:
        return json.loads(body, parse_constant=float)
    except RecursionError:
        raise JsonPolicyError((), "too_deep", "JSON nested too deeply") from None


def check(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise JsonPolicyError for the first value the policy refuses (iterative: no recursion)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, loc = stack.pop()
        if len(loc) > max_depth:
            raise JsonPolicyError(loc, "too_deep", f"nested deeper than {max_depth} levels")
        if isinstance(item, str):
            if has_lone_surrogate(item):
                raise JsonPolicyError(loc, "string_unicode", "string holds a lone UTF-16 surrogate")
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise JsonPolicyError(loc, "int_out_of_range", "integer does not fit in 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JsonPolicyError(loc, "finite_number", "number must be finite")
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and has_lone_surrogate(key):
                    raise JsonPolicyError(
                        (*loc, key.encode("utf-8", "backslashreplace").decode()),
                        "string_unicode",
                        "key holds a lone UTF-16 surrogate",
                    )
                stack.append((child, (*loc, key)))
        elif isinstance(item, list):
            stack.extend((child, (*loc, i)) for i, child in enumerate(item))


def parse_body(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """A request body under the policy (JsonPolicyError otherwise)."""
    value = loads(body)
    check(value, max_depth=max_depth)
    return value


# --- safe rendering ------------------------------------------------------------------------------
def sanitize(value: Any) -> Any:
    """A JSON-renderable copy: lone surrogates escaped, non-finite floats and other objects as text."""
    if isinstance(value, str):
        return (
            value.encode("utf-8", "backslashreplace").decode("utf-8") if has_lone_surrogate(value) else value
        )
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else f"<integer of {len(str(abs(value)))} digits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(sanitize(k)): sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize(v) for v in value]
    return sanitize(str(value))


class SafeJSONResponse(JSONResponse):
    """JSON that always renders (see `sanitize`)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            sanitize(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode()


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's error list without the echoed `input` (it may be huge or hostile) and `ctx` objects."""
    errors = []
    for err in exc.errors():
        item = {"type": err.get("type"), "loc": list(err.get("loc", ())), "msg": err.get("msg")}
        errors.append(item)
    return errors


def field_name(loc: list[Any]) -> str:
    """`["body", "inputs", 3, "alcohol"]` -> `inputs[3].alcohol`."""
    parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or (str(loc[0]) if loc else "body")


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    first: dict[str, Any] = errors[0] if errors else {"loc": ["body"], "msg": "invalid request"}
    return SafeJSONResponse(
        {"detail": errors, "field": field_name(first["loc"]), "message": first["msg"]}, status_code=422
    )


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = getattr(exc, "headers", None)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return SafeJSONResponse({"detail": "internal error"}, status_code=500)


Authorize = Callable[[Request], Awaitable[None]]


class JsonPolicyRoute(APIRoute):
    """Reads and checks the body before FastAPI parses it; runs the route's `authorize` hook first.

    Starlette caches the body and its parsed JSON on the request, so FastAPI's own parsing afterwards
    takes the value that passed `parse_body`.
    """

    max_body_bytes = MAX_BODY_BYTES
    max_depth = MAX_DEPTH
    authorize: Authorize | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        authorize = type(self).authorize
        limit, depth = self.max_body_bytes, self.max_depth
        reads_body = self.body_field is not None

        async def checked(request: Request) -> Response:
            if authorize is not None:
                await authorize(request)
            if reads_body and request.method in ("POST", "PUT", "PATCH"):
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and len(declared) < 20 and int(declared) > limit:
                    raise HTTPException(413, detail=f"body exceeds {limit} bytes")
                body = await request.body()
                if len(body) > limit:
                    raise HTTPException(413, detail=f"body exceeds {limit} bytes")
                if body:
                    try:
                        # Starlette caches a request's parsed JSON here: FastAPI reads this value
                        # instead of parsing the same bytes a second time.
                        request._json = parse_body(body, max_depth=depth)
                    except JsonPolicyError as exc:
                        raise exc.as_validation_error() from None
                    except ValueError as exc:  # not JSON (or not UTF-8): 422 like FastAPI's json_invalid
                        message = f"body is not JSON: {exc}"[:200]
                        raise JsonPolicyError((), "json_invalid", message).as_validation_error() from None
            return await handler(request)

        return checked


def documented(specific: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` of a route: the statuses this policy answers on every body-taking route (413
    over the size limit, 422 naming the field) plus the route's own, which win (status -> description)."""
    statuses = {
        413: "Body larger than the limit.",
        422: "Invalid body; `field` names the culprit.",
        **specific,
    }
    return {status: {"description": text} for status, text in sorted(statuses.items())}


def authorized_routes(check: Authorize) -> type[JsonPolicyRoute]:
    """A route class whose requests pass `check` (raising 401/403/503) before anything else."""
    return type("AuthorizedJsonPolicyRoute", (JsonPolicyRoute,), {"authorize": staticmethod(check)})


def install(app: FastAPI) -> None:
    """The policy route class for routes added from now on, and the safe error handlers."""
    app.router.route_class = JsonPolicyRoute
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
