"""The retrainer worker: a Faust agent on `flywheel.retraining.requested`.

Concurrency 1: one training at a time per worker (training is CPU- and memory-heavy, and requests of
one model must not race for its `challenger` alias). The handler runs the blocking work in a thread and
returns only once the request's outcome is recorded in MLflow, so Faust commits a request's offset only
after that (at-least-once; a redelivery is recognised by the handler and not trained twice).
"""

from __future__ import annotations

import logging
from typing import Any, cast

import faust
from faust.types import StreamT

from events import RETRAINING_REQUESTED
from services.retrainer.handler import RetrainHandler
from services.retrainer.settings import RetrainerSettings
from services.shared.faust_app import event_topic, make_faust_app

log = logging.getLogger(__name__)


def create_app(settings: RetrainerSettings, handler: RetrainHandler | None = None) -> faust.App:
    app = make_faust_app(settings.retrainer_group_id, settings, web_port=settings.retrainer_web_port)
    topic = event_topic(app, RETRAINING_REQUESTED)
    the_handler = handler or RetrainHandler(settings)

    async def retrain(stream: StreamT[Any]) -> None:
        async for raw in stream:
            await the_handler.handle_raw(raw)

    app.agent(topic, name="retrainer", concurrency=1)(retrain)

    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        log.info("partitions assigned: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))

    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    return app
