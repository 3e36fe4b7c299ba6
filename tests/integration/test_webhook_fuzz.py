"""Property test: thousands of generated bodies and headers thrown at the webhook endpoint.

Whatever arrives, the endpoint never answers 5xx (Kafka and Redis are up), and the events on Kafka are
exactly those acknowledged with `published` answers: nothing is published for an invalid delivery.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import AliasChanged
from services.cli.devstack.stack import Endpoints
from services.registry_watcher.bootstrap import create_app
from services.registry_watcher.domain.signature import sign
from tests.integration.test_webhook_endpoint import SECRET, settings_for
from tests.support import TopicReader, unique

pytestmark = pytest.mark.integration

PREFIX = f"fuzz{uuid.uuid4().hex[:8]}"
EXAMPLES = 2000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=15,
)
names = st.one_of(
    st.sampled_from([f"{PREFIX}_a", f"{PREFIX}_b"]),
    st.text(min_size=0, max_size=12).map(lambda s: f"{PREFIX}_{s}"),
    json_values,
)
alias_docs = st.fixed_dictionaries(
    {
        "entity": st.sampled_from(["model_version_alias", "model_version", "registered_model", "x"])
        | json_values,
        "action": st.sampled_from(["created", "deleted", "updated"]) | json_values,
        "timestamp": st.text(max_size=30) | json_values,
        "data": st.fixed_dictionaries(
            {"name": names, "alias": st.sampled_from(["champion", "challenger"]) | json_values},
            optional={"version": st.sampled_from(["1", "2", "3", 4]) | json_values},
        )
        | json_values,
    },
    optional={"extra": json_values},
)
# Well-formed alias events, so every run also exercises the publishing path (not only rejections).
valid_alias_docs = st.fixed_dictionaries(
    {
        "entity": st.just("model_version_alias"),
        "action": st.sampled_from(["created", "deleted"]),
        "timestamp": st.just("2026-01-01T00:00:00Z"),
        "data": st.fixed_dictionaries(
            {
                "name": st.sampled_from([f"{PREFIX}_a", f"{PREFIX}_b"]),
                "alias": st.sampled_from(["champion", "challenger"]),
                "version": st.sampled_from(["1", "2", "3"]),
            }
        ),
    }
)
bodies = st.one_of(
    valid_alias_docs.map(lambda d: json.dumps(d).encode()),
    alias_docs.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
signing = st.sampled_from(
    ["valid", "valid", "valid", "none", "wrong_secret", "garbage", "stale", "future", "bad_ts"]
)
header_text = st.text(max_size=40).filter(lambda s: s.isascii() and s.isprintable())


@pytest.fixture(scope="module")
def fuzz_client(stack: Endpoints) -> Iterator[TestClient]:
    app = create_app(settings_for(stack, unique("fuzz")), background=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def headers_for(mode: str, body: bytes, delivery_id: str, junk: str) -> dict[str, str]:
    now = int(time.time())
    ts = {"stale": now - 1000, "future": now + 1000}.get(mode, now)
    timestamp = "12ab" if mode == "bad_ts" else str(ts)
    headers = {"X-MLflow-Delivery-Id": delivery_id, "X-MLflow-Timestamp": timestamp}
    if mode in ("valid", "stale", "future", "bad_ts"):
        headers["X-MLflow-Signature"] = sign(SECRET, delivery_id, timestamp, body)
    elif mode == "wrong_secret":
        headers["X-MLflow-Signature"] = sign("not-the-secret", delivery_id, timestamp, body)
    elif mode == "garbage":
        headers["X-MLflow-Signature"] = junk
    return headers


def test_no_5xx_and_nothing_published_for_invalid_deliveries(
    fuzz_client: TestClient, stack: Endpoints
) -> None:
    published_ids: set[str] = set()
    statuses: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
    )
    @given(body=bodies, mode=signing, delivery=st.uuids().map(str) | header_text, junk=header_text)
    def throw(body: bytes, mode: str, delivery: str, junk: str) -> None:
        headers = headers_for(mode, body, delivery, junk)
        resp = fuzz_client.post("/webhooks/mlflow", content=body, headers=headers)
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (resp.status_code, resp.text, body, headers)
        if mode != "valid" or not delivery:
            assert resp.status_code == 401, (resp.status_code, resp.text)
        if resp.status_code == 200 and resp.json().get("status") == "published":
            published_ids.update(resp.json()["event_ids"])
        else:
            assert not resp.json().get("event_ids")

    throw()
    assert sum(statuses.values()) >= EXAMPLES
    reader = TopicReader(stack, "flywheel.registry.alias-changed")
    try:

        def ours(e: object) -> bool:
            return isinstance(e, AliasChanged) and e.model.startswith(PREFIX)

        # Read until every acknowledged event arrived (the topic may hold much from other tests, and an
        # event may arrive twice: at least once), then a little longer to prove nothing else was published.
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and not published_ids <= {e.event_id for e in reader.events(ours)}:
            reader.poll()
        reader.settle(1.0)
        on_kafka = {e.event_id for e in reader.events(ours)}
    finally:
        reader.close()
    assert published_ids, "no valid alias change was generated"
    assert on_kafka == published_ids
    assert statuses.get(401, 0) > 0 and statuses.get(200, 0) > 0, statuses
