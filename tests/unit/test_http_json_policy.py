"""The JSON policy every HTTP surface shares, and error bodies that always render."""

from __future__ import annotations

import json

import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, JsonValue

from services.shared import http_json
from services.shared.identifiers import filter_literal, is_filter_safe


@pytest.mark.parametrize(
    ("text", "loc", "kind"),
    [
        ('{"a": [1, {"b": "\\ud800"}]}', ("a", 1, "b"), "string_unicode"),
        ('{"a": NaN}', ("a",), "finite_number"),
        ('{"a": [-Infinity]}', ("a", 0), "finite_number"),
        ('{"a": 1e999}', ("a",), "finite_number"),
        ('{"a": ' + "1" * 400 + "}", ("a",), "int_out_of_range"),
        ("[" * 5000 + "]" * 5000, (), "too_deep"),
        ("[" * 40 + "]" * 40, (0,) * 33, "too_deep"),
    ],
)
def test_the_policy_refuses_what_python_json_accepts(text: str, loc: tuple, kind: str) -> None:
    with pytest.raises(http_json.JsonPolicyError) as caught:
        http_json.parse_body(text.encode())
    assert caught.value.kind == kind and caught.value.loc == loc


def test_the_policy_accepts_ordinary_json() -> None:
    doc = {"inputs": [{"a": 1.5, "b": -(2**63), "c": "ünïcode ✓", "d": None, "e": [True, 2**63 - 1]}]}
    assert http_json.parse_body(json.dumps(doc).encode()) == doc


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_sanitized_values_always_render(value: object) -> None:
    rendered = http_json.SafeJSONResponse({"detail": value}).body
    json.loads(rendered)  # valid JSON, UTF-8, no NaN


def test_field_names_read_like_the_request() -> None:
    assert http_json.field_name(["body", "inputs", 3, "alcohol"]) == "inputs[3].alcohol"
    assert http_json.field_name(["query", "version"]) == "version"
    assert http_json.field_name(["body"]) == "body"


class Body(BaseModel):
    value: JsonValue = None


def app_with_policy() -> FastAPI:
    app = FastAPI()
    http_json.install(app)

    async def deny(request: Request) -> None:
        if request.headers.get("authorization") != "Bearer ok":
            raise HTTPException(401, detail="no")

    admin = APIRouter(route_class=http_json.authorized_routes(deny))

    @app.post("/echo")
    async def echo(body: Body) -> dict:
        return {"value": body.value}

    @app.get("/items/{name}")
    async def item(name: str) -> dict:
        raise HTTPException(404, detail=f"no item {name!r} \ud800")  # even a hostile detail renders

    @admin.post("/admin")
    async def act(body: Body) -> dict:
        return {"ok": True}

    app.include_router(admin)
    return app


def test_routes_answer_422_naming_the_field_and_never_echo_the_input() -> None:
    client = TestClient(app_with_policy())
    resp = client.post(
        "/echo", content=b'{"value": {"x": ["\\ud800"]}}', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422 and resp.json()["field"] == "value.x[0]"
    assert "input" not in resp.json()["detail"][0]
    assert (
        client.post(
            "/echo", content=b'{"value": NaN}', headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert (
        client.post("/echo", content=b"[" * 100_000, headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert client.post("/echo", content=b"x" * (2 * 1024 * 1024)).status_code == 413
    not_json = client.post("/echo", content=b"/\xef\xbf^\xff", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["field"] == "body"
    assert client.post("/echo", json={"value": [1, "a"]}).json() == {"value": [1, "a"]}
    assert client.get("/items/abc").status_code == 404


def test_admin_routes_authenticate_before_the_body_is_read() -> None:
    client = TestClient(app_with_policy())
    for body in (b"{", b'{"value": NaN}', b"[" * 10_000):
        assert client.post("/admin", content=body).status_code == 401
        assert client.post("/admin", content=body, headers={"authorization": "Bearer ok"}).status_code == 422
    assert client.post("/admin", json={}, headers={"authorization": "Bearer ok"}).status_code == 200


def test_filter_literals_only_for_plain_identifiers() -> None:
    assert filter_literal("0123abcd" * 4) == "'" + "0123abcd" * 4 + "'"
    for hostile in ("a' OR '1'='1", "a`b", "", "x" * 300, "a b", "\ud800"):
        assert not is_filter_safe(hostile)
        with pytest.raises(ValueError):
            filter_literal(hostile)


def test_every_service_app_builds_and_documents_its_statuses() -> None:
    """Route parameters are compiled by pydantic-core (its regex engine has no look-around): building
    each app and its OpenAPI catches a pattern it cannot compile before any service is started."""
    from unittest.mock import MagicMock

    from services.canary_rollout.entrypoints.http import create_api
    from services.gateway.bootstrap import create_app as gateway_app
    from services.registry_watcher.bootstrap import create_app as watcher_app

    service = MagicMock()
    apps = {"gateway": gateway_app(), "watcher": watcher_app(), "canary": create_api(service)}
    docs = {name: app.openapi() for name, app in apps.items()}
    predict = docs["gateway"]["paths"]["/v1/models/{name}/predict"]["post"]["responses"]
    assert {"200", "404", "413", "422", "502", "503"} <= set(predict)
    admin = docs["canary"]["paths"]["/v1/rollouts/{model}/{action}"]["post"]["responses"]
    assert {"200", "401", "403", "404", "409", "422"} <= set(admin)
    webhook = docs["watcher"]["paths"]["/webhooks/mlflow"]["post"]["responses"]
    assert {"200", "400", "401", "413", "422", "503"} <= set(webhook)
