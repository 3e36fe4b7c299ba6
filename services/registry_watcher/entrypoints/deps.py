"""The watcher's dependencies, built once per process (bootstrap) and handed to routes (`WatcherDep`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from redis.asyncio import Redis

from services.registry_watcher.adapters.alias_state import AliasStateStore
from services.registry_watcher.adapters.outbox import OutboxRelay
from services.registry_watcher.domain.delivery_health import DeliveryHealth
from services.registry_watcher.entrypoints.poller import RegistryPoller
from services.registry_watcher.handlers import AliasChangeRecorder
from services.registry_watcher.settings import WatcherSettings
from services.registry_watcher.state_restore import StateKeeper
from services.shared.http_deps import from_app_state
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.redis_store import RedisKeys


@dataclass
class Binding:
    """Whether this watcher may publish: its alias state belongs to the registry it watches."""

    status: str = "pending"  # pending | bound | same | adopted | refused
    detail: str = "the registry identity has not been checked yet"

    @property
    def ok(self) -> bool:
        return self.status in ("bound", "same", "adopted")


@dataclass
class Watcher:
    """Everything the endpoint needs, built once per process in the lifespan."""

    settings: WatcherSettings
    redis: Redis
    keys: RedisKeys
    state: AliasStateStore
    publisher: KafkaPublisher
    relay: OutboxRelay
    recorder: AliasChangeRecorder
    poller: RegistryPoller
    binding: Binding
    health: DeliveryHealth
    keeper: StateKeeper | None = None  # set once built (it binds through the watcher)


WatcherDep = Annotated[Watcher, Depends(from_app_state("watcher"))]
