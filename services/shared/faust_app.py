"""The one way Flywheel builds and runs a Faust worker (cache invalidation, canary rollout, feedback
aggregation): same broker settings, same topic handling, same shutdown behaviour everywhere.

Why each setting of `make_faust_app`:

- `broker`: `kafka://host:port` per entry of `KAFKA_BOOTSTRAP_SERVERS` (comma list), so one variable
  configures every client in the project.
- the broker profile's `faust` kwargs (`services.shared.kafka.profile`): short session timeout and
  heartbeat (Tansu quirks 2 and 4: a join is held for half the session timeout, and a stopped worker
  stays a group member until its session expires) and one record per producer batch (quirk 1: the
  high watermark is only right when every batch holds one record). For Apache Kafka ("standard") they
  are ordinary production values. Service code never special-cases a broker.
- `topic_allow_declare=False`: our topics already exist with their own partitions and settings
  (`services.shared.kafka.admin.ensure_topics`, deploy manifests); Faust would otherwise try to create
  every topic it touches with *its* defaults (8 partitions, its retention), which is wrong for ours
  and not allowed on managed clusters.
- `topic_disable_leader=True`: no `{app_id}-__assignor-__leader` topic; no worker uses `on_leader`.
- `store="memory://"`: no RocksDB; a worker that needs durable state keeps it in Redis or in a table
  rebuilt from its changelog (recovery is exact on Tansu only with quirk 1's workaround).
- `web_enabled=False` but a distinct `web_port`: the workers expose nothing over Faust's web server,
  yet a worker binds its web port anyway (quirk 7), so two workers on one host need two ports.
- `consumer_auto_offset_reset="earliest"`: a new consumer group starts at the beginning of the topic
  (a fresh worker rebuilds its view from history; events are idempotent by design); "latest" would
  also re-read records on Tansu (quirk 1).
- `key_serializer`/`value_serializer="raw"`: Faust hands us bytes and `events.decode` does the
  parsing, so the envelope's version rules (unknown major version -> error) apply to every consumer
  and a malformed message can be logged and counted instead of crashing the stream in Faust's codec.
- `autodiscover=False`, `worker_redirect_stdouts=False`: agents are registered explicitly by the
  service module and logging is configured by `services.shared.logging_setup`.
- `datadir` under the system temp dir: Faust creates its data directories on start; they must not
  appear in the current directory of whoever starts a worker.
- the profile's `faust_fetch_max_wait_ms`, when set: Faust builds its aiokafka consumer with a fixed
  `fetch_max_wait_ms=1500` and no setting to change it (quirk 3 is about this wait), so
  `_limit_fetch_wait` makes the worker consumers use the profile's value. Unset (None) keeps Faust's.
- processing guarantee stays at-least-once (Faust's default): an offset is committed only after the
  agent moved past the event, so effects must be idempotent (they are: ordered by event time and id).

`**overrides` win over everything above (e.g. a test shortening `broker_commit_interval`).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import faust

from events import ALL_TOPICS
from services.shared.kafka.profile import profile_named
from services.shared.settings import FlywheelSettings

log = logging.getLogger(__name__)


def broker_urls(bootstrap_servers: str) -> list[str]:
    """`h1:9092,h2:9092` -> `["kafka://h1:9092", "kafka://h2:9092"]`."""
    servers = [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
    if not servers:
        raise ValueError("KAFKA_BOOTSTRAP_SERVERS is empty")
    return [s if "://" in s else f"kafka://{s}" for s in servers]


def faust_settings(app_id: str, settings: FlywheelSettings, *, web_port: int) -> dict[str, Any]:
    """The keyword arguments `make_faust_app` gives `faust.App` (before overrides); see module doc."""
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", app_id)
    return {
        "broker": broker_urls(settings.kafka_bootstrap_servers),
        **profile_named(settings.kafka_profile).faust,
        "topic_allow_declare": False,
        "topic_disable_leader": True,
        "store": "memory://",
        "web_enabled": False,
        "web_port": web_port,
        "web_bind": "127.0.0.1",
        "web_host": "127.0.0.1",
        "consumer_auto_offset_reset": "earliest",
        "key_serializer": "raw",
        "value_serializer": "raw",
        "autodiscover": False,
        "worker_redirect_stdouts": False,
        "datadir": str(Path(tempfile.gettempdir()) / f"flywheel-faust-{safe_id}"),
    }


def _limit_fetch_wait(max_wait_ms: int) -> None:
    """Make Faust's worker consumers use `fetch_max_wait_ms=max_wait_ms` (embedded-broker profile only).

    Faust builds its aiokafka consumer with a fixed `fetch_max_wait_ms=1500`; there is no setting. Real
    Kafka answers a Fetch as soon as data arrives, so that is harmless there, but the embedded broker
    holds every Fetch for the full wait (DESIGN.md quirk 3). Process-wide, as a worker runs one app.
    """
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread_cls, "_flywheel_original_create", None) or thread_cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    thread_cls._flywheel_original_create = original  # type: ignore[attr-defined]
    thread_cls._create_worker_consumer = create  # type: ignore[method-assign]


def make_faust_app(app_id: str, settings: FlywheelSettings, *, web_port: int, **overrides: Any) -> faust.App:
    """A Faust app for one Flywheel worker; `app_id` is also its Kafka consumer group id."""
    fetch_wait = profile_named(settings.kafka_profile).faust_fetch_max_wait_ms
    if fetch_wait is not None:
        _limit_fetch_wait(fetch_wait)
    conf = {**faust_settings(app_id, settings, web_port=web_port), **overrides}
    log.debug("faust app %s: %s", app_id, conf)
    return faust.App(app_id, **conf)


def event_topic(app: faust.App, topic: str) -> faust.TopicT:
    """A Faust topic for one of our event topics, yielding raw bytes (decode with `events.decode`).

    Our topics are created outside Faust (see `topic_allow_declare`), so partitions are not given here.
    """
    if topic not in ALL_TOPICS:
        raise ValueError(f"{topic!r} is not a Flywheel event topic; known: {', '.join(ALL_TOPICS)}")
    return app.topic(
        topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        internal=False,
    )


def run_worker(app: faust.App, log_level: str = "INFO") -> None:
    """Run `app` in this process until SIGTERM/SIGINT, then stop cleanly and exit.

    Faust's worker installs the signal handlers itself: SIGTERM stops the agents (an event in flight is
    not acknowledged, so it is delivered again after a restart), commits acknowledged offsets, closes
    the consumer and exits 0; a crash exits non-zero. Logging must already be configured (the worker
    does not override it). Never returns: exits the process through `SystemExit`.
    """
    worker = faust.Worker(
        app,
        loglevel=log_level,
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,
    )
    worker.spinner = None  # no terminal spinner in service logs
    worker.execute_from_commandline()
