from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from services.cli.devstack.stack import Endpoints
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.redis_store import RedisKeys, sync_redis
from tests.support import unique

pytestmark = pytest.mark.integration


@pytest.fixture()
def redis_client(stack: Endpoints) -> Iterator[redis.Redis]:
    client = sync_redis(stack.redis_url)
    yield client
    client.close()


@pytest.fixture()
def publisher(stack: Endpoints) -> Iterator[KafkaPublisher]:
    pub = KafkaPublisher(stack.kafka_bootstrap_servers, profile_named(stack.kafka_profile), client_id="tests")
    yield pub
    pub.close()


@pytest.fixture()
def keys() -> RedisKeys:
    """A Redis namespace of this test's own."""
    return RedisKeys(unique("t"))
