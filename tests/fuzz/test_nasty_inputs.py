"""Hand-made hostile requests — one regression test per class found when the product was attacked — and
hypothesis bodies that put the nasty values anywhere in an otherwise valid request.

After all of it the replica must still publish its events and take honest feedback: a poisoned request
must not silence anything.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import INFERENCES, InferenceRecorded
from services.cli.devstack.sample_models import wine_data
from tests.fuzz.conftest import ADMIN_TOKEN, WEBHOOK_SECRET, FuzzStack
from tests.support import TopicReader, alias_payload, signed_headers

JSON = {"Content-Type": "application/json"}
# Raw JSON texts of the value classes that once hurt: Python's json accepts all of them.
NASTY = [
    '"\\ud800"',  # a lone surrogate
    '"ok\\udfffok"',
    "NaN",
    "Infinity",
    "-Infinity",
    "1" * 400,  # a 400-digit integer
    "-" + "9" * 30,
    "1e999",  # a float literal that overflows to inf
    "[" * 3000 + "]" * 3000,  # nesting deeper than the interpreter's recursion limit
    '{"a":' * 200 + "1" + "}" * 200,
]


def record() -> dict[str, float]:
    row = wine_data().test_x.iloc[0]
    return {k: float(v) for k, v in row.items()}


def predict(
    stack: FuzzStack, body: bytes | str, query: str = "", name: str | None = None
) -> tuple[int, dict]:
    path = f"/v1/models/{name or stack.model}/predict{query}"
    resp = stack.request(
        stack.gateway, "POST", path, endpoint="gateway POST predict (hand-made)", content=body, headers=JSON
    )
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, {"raw": resp.text}


def good_body() -> str:
    return json.dumps({"inputs": record(), "user_id": "fuzz-user"})


def with_value(raw_value: str, where: str) -> str:
    """A valid predict body with `raw_value` (JSON text) placed at `where`."""
    rec = json.dumps(record())
    if where == "input":
        return '{"inputs": ' + rec[:-1] + ', "alcohol": ' + raw_value + "}}"
    if where == "params":
        return '{"inputs": ' + rec + ', "params": {"p": ' + raw_value + "}}"
    return '{"inputs": ' + rec + ', "user_id": ' + raw_value + "}"


@pytest.mark.parametrize("where", ["input", "params", "user_id"])
@pytest.mark.parametrize("raw_value", NASTY)
def test_nasty_values_are_refused_with_422_naming_the_field(
    fuzz_stack: FuzzStack, raw_value: str, where: str
) -> None:
    status, body = predict(fuzz_stack, with_value(raw_value, where))
    assert status == 422, body
    expected = {"input": "inputs.alcohol", "params": "params.p", "user_id": "user_id"}[where]
    deep = raw_value.startswith(("[", "{"))
    assert body["field"].startswith(expected) or (deep and body["field"] in ("body", expected)), body


def test_a_lone_surrogate_leaves_the_replica_publishing_and_taking_feedback(fuzz_stack: FuzzStack) -> None:
    """The request that once killed the inference-event publisher for good, then a good one."""
    reader = TopicReader(fuzz_stack.endpoints, INFERENCES)
    try:
        for where in ("input", "params", "user_id"):
            assert predict(fuzz_stack, with_value('"\\ud800"', where))[0] == 422
        status, body = predict(fuzz_stack, good_body())
        assert status == 200, body
        events = reader.wait_for(
            lambda e: isinstance(e, InferenceRecorded) and e.request_id == body["request_id"], 1
        )
        assert len(events) == 1
    finally:
        reader.close()
    feedback = {
        "request_id": body["request_id"],
        "feedback_token": body["feedback_token"],
        "rating": "thumbs_down",
        "corrected_output": 1,
        "user_id": "fuzz-user",
    }
    resp = fuzz_stack.request(
        fuzz_stack.gateway,
        "POST",
        "/v1/feedback",
        endpoint="gateway POST feedback (hand-made)",
        json=feedback,
    )
    assert resp.status_code == 202, resp.text


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("?version=abc", None),
        ("?version=" + "9" * 23, None),
        ("?version=0", None),
        ("?alias=a%27b", None),
        ("", "%20"),
    ],
)
def test_bad_versions_aliases_and_names_are_client_errors_answered_at_once(
    fuzz_stack: FuzzStack, query: str, name: str | None
) -> None:
    started = time.monotonic()
    status, body = predict(fuzz_stack, good_body(), query=query, name=name)
    assert status == 422, body
    assert time.monotonic() - started < 5  # no MLflow retries for a permanent error


def test_an_unknown_version_is_404(fuzz_stack: FuzzStack) -> None:
    assert predict(fuzz_stack, good_body(), query="?version=9999")[0] == 404


def test_a_body_over_the_limit_is_413(fuzz_stack: FuzzStack) -> None:
    huge = '{"inputs": {"alcohol": "' + "x" * (1024 * 1024 + 10) + '"}}'
    assert predict(fuzz_stack, huge)[0] == 413


@pytest.mark.parametrize(
    "feedback",
    [
        {"request_id": "abc' OR '1'='1", "rating": "thumbs_up"},  # once pasted into an MLflow filter
        {"request_id": "0" * 32 + "'", "rating": "thumbs_up"},
        {"trace_id": "tr-`x`", "rating": "thumbs_up"},
        {"request_id": uuid.uuid4().hex, "rating": "thumbs_up", "corrected_output": "\ud800"},
        {"request_id": uuid.uuid4().hex, "rating": "meh"},
    ],
)
def test_feedback_ids_have_a_format_and_bodies_the_policy(fuzz_stack: FuzzStack, feedback: dict) -> None:
    raw = json.dumps(feedback)  # ensure_ascii: a lone surrogate travels as \\ud800, as a client sends it
    resp = fuzz_stack.request(
        fuzz_stack.gateway,
        "POST",
        "/v1/feedback",
        endpoint="gateway POST feedback (hand-made)",
        content=raw,
        headers=JSON,
    )
    assert resp.status_code == 422, resp.text


def test_feedback_on_an_unknown_well_formed_request_is_refused_before_any_lookup(
    fuzz_stack: FuzzStack,
) -> None:
    for token in (None, "v2.99999999999.W10.forged"):
        resp = fuzz_stack.request(
            fuzz_stack.gateway,
            "POST",
            "/v1/feedback",
            endpoint="gateway POST feedback (hand-made)",
            json={"request_id": uuid.uuid4().hex, "rating": "thumbs_up", "feedback_token": token},
        )
        assert resp.status_code == 401, resp.text  # no valid token: nothing to look up


# --- registry watcher --------------------------------------------------------------------------------
def webhook(stack: FuzzStack, body: bytes, headers: dict[str, str]) -> int:
    return stack.request(
        stack.watcher,
        "POST",
        "/webhooks/mlflow",
        endpoint="watcher POST webhook (hand-made)",
        content=body,
        headers=headers,
    ).status_code


def test_an_absurd_timestamp_is_refused_before_any_arithmetic(fuzz_stack: FuzzStack) -> None:
    body = alias_payload(fuzz_stack.model, "champion", "1")
    headers = signed_headers(WEBHOOK_SECRET, body)
    headers["X-MLflow-Timestamp"] = "9" * 400  # no secret needed to send this
    assert webhook(fuzz_stack, body, headers) == 401


@pytest.mark.parametrize("raw_value", NASTY)
def test_signed_hostile_payloads_are_4xx(fuzz_stack: FuzzStack, raw_value: str) -> None:
    body = ('{"entity": "model_version_alias", "action": "created", "data": ' + raw_value + "}").encode()
    assert webhook(fuzz_stack, body, signed_headers(WEBHOOK_SECRET, body)) in (400, 422)


# --- canary control ------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"{", b'{"reason": NaN}', b'{"reason": "\\ud800"}', b"[" * 5000])
@pytest.mark.parametrize("action", ["promote", "abort", "no-such-action"])
def test_admin_actions_authenticate_before_anything_else(
    fuzz_stack: FuzzStack, body: bytes, action: str
) -> None:
    path = f"/v1/rollouts/{fuzz_stack.model}/{action}"
    no_token = fuzz_stack.request(
        fuzz_stack.canary, "POST", path, endpoint="canary POST admin (hand-made)", content=body, headers=JSON
    )
    assert no_token.status_code == 401, no_token.text
    wrong = fuzz_stack.request(
        fuzz_stack.canary,
        "POST",
        path,
        endpoint="canary POST admin (hand-made)",
        content=body,
        headers={**JSON, "Authorization": "Bearer wrong"},
    )
    assert wrong.status_code == 401
    with_token = fuzz_stack.request(
        fuzz_stack.canary,
        "POST",
        path,
        endpoint="canary POST admin (hand-made)",
        content=body,
        headers={**JSON, "Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert with_token.status_code in (404, 422), with_token.text  # unknown action, or then the body


# --- hypothesis: nasty values anywhere ------------------------------------------------------------------
json_leaf = st.one_of(
    st.sampled_from(NASTY[:8]),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.text(max_size=20).map(json.dumps),
    st.just("null"),
    st.booleans().map(json.dumps),
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> str:
    """A predict or feedback body whose fields hold random, partly hostile JSON texts."""
    rec = record()
    keys = draw(st.lists(st.sampled_from(sorted(rec)), min_size=1, max_size=3, unique=True))
    fields = [f'"{k}": {draw(json_leaf)}' if k in keys else f'"{k}": {json.dumps(v)}' for k, v in rec.items()]
    inputs = "{" + ", ".join(fields) + "}"
    if draw(st.booleans()):
        inputs = "[" + inputs + "]"
    extra = draw(
        st.sampled_from(["", ', "params": {"t": ' + draw(json_leaf) + "}", ', "user_id": ' + draw(json_leaf)])
    )
    return '{"inputs": ' + inputs + extra + "}"


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=hostile_bodies())
def test_hypothesis_predict_bodies_never_5xx(fuzz_stack: FuzzStack, body: str) -> None:
    status, answer = predict(fuzz_stack, body)
    assert status in (200, 422), answer


def test_after_the_barrage_the_replica_still_publishes(fuzz_stack: FuzzStack) -> None:
    reader = TopicReader(fuzz_stack.endpoints, INFERENCES)
    try:
        status, body = predict(fuzz_stack, good_body())
        assert status == 200
        assert reader.wait_for(lambda e: getattr(e, "request_id", None) == body["request_id"], 1)
    finally:
        reader.close()
