"""Consumer lag as the runtime reports it: `flywheel_consumer_lag_messages{worker,topic,partition}`.

For each partition assigned to an instance: the high watermark (the broker's end offset) minus the next
offset to handle. The runtime (`consumer.py`) knows the next offsets of what it handled and refreshes the
gauge on a timer; this module reads the broker's side through public APIs (aiokafka's consumer, or Faust's
`app.consumer`), computes the lag, and keeps the gauge to exactly the partitions the instance holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Gauge

LAG = Gauge(
    "flywheel_consumer_lag_messages",
    "Messages of an assigned partition not handled yet: high watermark minus the next offset to handle",
    ["worker", "topic", "partition"],
)


class OffsetReader(Protocol):
    """What the lag gauge reads of a consumer: an aiokafka consumer as it is (the batch consumer's), or
    Faust's through `FaustOffsets`."""

    async def end_offsets(self, partitions: list[TopicPartition]) -> Mapping[TopicPartition, int]: ...
    async def position(self, partition: TopicPartition) -> int | None: ...


@dataclass(frozen=True)
class FaustOffsets:
    """Faust's consumer (`app.consumer`, public API) as an `OffsetReader`: `highwaters` asks the broker
    for the end offsets (ListOffsets), `position` is the aiokafka consumer's fetch position."""

    consumer: Any

    async def end_offsets(self, partitions: list[TopicPartition]) -> Mapping[TopicPartition, int]:
        return cast(Mapping[TopicPartition, int], await self.consumer.highwaters(*partitions))

    async def position(self, partition: TopicPartition) -> int | None:
        return cast("int | None", await self.consumer.position(partition))


def consumer_lag(
    end_offsets: Mapping[TopicPartition, int | None], positions: Mapping[TopicPartition, int | None]
) -> dict[TopicPartition, int]:
    """Messages each partition is behind: its end offset (high watermark, the offset the next produced
    message gets) minus the next offset to handle. Partitions where either is unknown are left out; never
    negative (the end offset may have been read a moment before the position moved)."""
    lags = {}
    for tp, end in end_offsets.items():
        position = positions.get(tp)
        if end is not None and position is not None:
            lags[tp] = max(0, end - position)
    return lags


async def position_of(reader: OffsetReader, tp: TopicPartition, timeout_s: float) -> int | None:
    """The consumer's fetch position of `tp`; None when it has none yet (aiokafka waits for one) or the
    partition was revoked meanwhile."""
    try:
        return await asyncio.wait_for(reader.position(tp), timeout_s)
    except (TimeoutError, KafkaError):
        return None


@dataclass
class LagGauge:
    """The gauge's series of one worker: exactly the partitions last shown, removed once not ours."""

    worker: str
    shown: set[TopicPartition] = field(default_factory=set)

    def show(self, lags: Mapping[TopicPartition, int]) -> None:
        for tp, lag in lags.items():
            LAG.labels(self.worker, tp.topic, str(tp.partition)).set(lag)
        self.forget(self.shown - lags.keys())
        self.shown = set(lags)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in set(partitions) & self.shown:
            LAG.remove(self.worker, tp.topic, str(tp.partition))
        self.shown -= set(partitions)
