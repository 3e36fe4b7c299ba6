"""Adaptive micro-batching (services/gateway/batching.py) with a fake model: who shares a call, who waits,
and whose error is whose."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.gateway.batching import Predictions, predict_jobs


@dataclass
class FakeModel:
    """Echoes each row's `id` times ten; raises for a row with `bad`; `calls` records the rows per call."""

    name: str = "m"
    version: str = "1"
    batchable: bool = True
    predict_seconds: float = 0.0
    calls: list[list[int]] = field(default_factory=list)
    params_seen: list[dict[str, Any]] = field(default_factory=list)
    one_output: bool = False  # not row-wise: one output whatever the rows
    gate: threading.Event | None = None  # the call blocks until set (a slow model on a thread)

    def predict(self, records: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
        self.calls.append([r["id"] for r in records])
        self.params_seen.append(params)
        if self.gate is not None:
            self.gate.wait(5)
        if any(r.get("bad") for r in records):
            raise ValueError("bad row")
        if self.one_output:
            return [sum(r["id"] for r in records)]
        return [r["id"] * 10 for r in records]


def rows(*ids: int, bad: bool = False) -> list[dict[str, Any]]:
    return [{"id": i, **({"bad": True} if bad else {})} for i in ids]


def pool(**kwargs: Any) -> Predictions:
    return Predictions(**{"max_rows": 64, "wait_s": 0.002, "inline_max_s": 1.0, **kwargs})


async def test_a_lone_request_is_predicted_at_once_even_with_a_long_wait_configured() -> None:
    model, predictions = FakeModel(), pool(wait_s=30.0)
    # Nothing else is on its way: a fixed wait would take 30 s; it must answer at once.
    got = await asyncio.wait_for(predictions.call(model, rows(7), {}), timeout=2.0)  # type: ignore[arg-type]
    assert got == [70] and model.calls == [[7]]


async def test_requests_that_arrive_together_share_one_call_and_get_their_own_rows() -> None:
    model, predictions = FakeModel(), pool()
    results = await asyncio.gather(*(predictions.call(model, rows(i, i + 100), {}) for i in range(8)))  # type: ignore[arg-type]
    assert results == [[i * 10, (i + 100) * 10] for i in range(8)]
    assert len(model.calls) == 1 and sorted(model.calls[0]) == sorted(
        x for i in range(8) for x in (i, i + 100)
    )


async def test_one_bad_record_fails_only_its_own_request() -> None:
    model, predictions = FakeModel(), pool()
    calls = [predictions.call(model, rows(i, bad=(i == 3)), {}) for i in range(6)]  # type: ignore[arg-type]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], ValueError)
    assert [r for i, r in enumerate(results) if i != 3] == [[0], [10], [20], [40], [50]]
    # One batched call, then each request on its own to find whose record was bad.
    assert model.calls[0] == [0, 1, 2, 3, 4, 5] and sorted(map(tuple, model.calls[1:])) == [
        (i,) for i in range(6)
    ]


async def test_a_batch_holds_at_most_max_rows_and_never_splits_a_request() -> None:
    model, predictions = FakeModel(), pool(max_rows=7)
    results = await asyncio.gather(
        *(predictions.call(model, rows(3 * i, 3 * i + 1, 3 * i + 2), {}) for i in range(10))
    )  # type: ignore[arg-type]
    assert results == [[30 * i, 30 * i + 10, 30 * i + 20] for i in range(10)]
    assert all(len(call) <= 7 for call in model.calls)
    assert all(len(call) % 3 == 0 for call in model.calls)  # whole requests only
    assert len(model.calls) == 5  # two requests (6 rows) per call


async def test_requests_with_different_params_never_share_a_call() -> None:
    model, predictions = FakeModel(), pool()
    await asyncio.gather(
        predictions.call(model, rows(1), {}),  # type: ignore[arg-type]
        predictions.call(model, rows(2), {"k": 1}),  # type: ignore[arg-type]
        predictions.call(model, rows(3), {}),  # type: ignore[arg-type]
        predictions.call(model, rows(4), {"k": 1}),  # type: ignore[arg-type]
    )
    assert sorted(model.calls) == [[1, 3], [2, 4]]
    assert {tuple(p.items()) for p in model.params_seen} == {(), (("k", 1),)}


async def test_a_model_without_one_output_per_row_is_called_one_request_at_a_time() -> None:
    model, predictions = FakeModel(one_output=True), pool()
    first = await asyncio.gather(*(predictions.call(model, rows(i, i), {}) for i in range(1, 4)))  # type: ignore[arg-type]
    assert first == [[2], [4], [6]]  # what each request alone gets
    model.calls.clear()
    again = await asyncio.gather(*(predictions.call(model, rows(i), {}) for i in range(1, 4)))  # type: ignore[arg-type]
    assert again == [[1], [2], [3]] and model.calls == [[1], [2], [3]]


async def test_requests_queue_while_a_slow_batch_runs_on_its_thread_and_form_the_next_batch() -> None:
    gate = threading.Event()
    model, predictions = FakeModel(gate=gate, predict_seconds=1.0), pool(inline_max_s=0.01)
    first = asyncio.ensure_future(predictions.call(model, rows(0), {}))  # type: ignore[arg-type]
    while not model.calls:  # noqa: ASYNC110 - the first call is running (on a worker thread: the loop stays free)
        await asyncio.sleep(0.001)
    queued = [asyncio.ensure_future(predictions.call(model, rows(i), {})) for i in range(1, 6)]  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert len(model.calls) == 1  # one batch at a time per version
    gate.set()
    assert await first == [0]
    assert await asyncio.gather(*queued) == [[10], [20], [30], [40], [50]]
    assert model.calls == [[0], [1, 2, 3, 4, 5]]
    predictions.close()


async def test_a_batch_waits_for_requests_on_their_way_but_only_while_they_are() -> None:
    model, predictions = FakeModel(), pool(wait_s=30.0)
    predictions.arriving = 1  # another request is inside the handler, not yet at its batcher
    waiting = asyncio.ensure_future(predictions.call(model, rows(1), {}))  # type: ignore[arg-type]
    for _ in range(20):
        await asyncio.sleep(0)
    assert model.calls == [] and not waiting.done()  # held for it

    async def the_one_on_its_way() -> list[Any]:  # as the handler does: arrived, then straight to its batch
        predictions.arrived()
        return await predictions.call(model, rows(2), {})  # type: ignore[arg-type]

    second = asyncio.ensure_future(the_one_on_its_way())
    assert await asyncio.wait_for(asyncio.gather(waiting, second), timeout=2.0) == [[10], [20]]
    assert model.calls == [[1, 2]]


async def test_batching_off_predicts_every_request_on_its_own() -> None:
    model, predictions = FakeModel(), pool(wait_s=0.0)
    await asyncio.gather(*(predictions.call(model, rows(i), {}) for i in range(4)))  # type: ignore[arg-type]
    assert sorted(model.calls) == [[0], [1], [2], [3]]


async def test_a_caller_that_went_away_is_not_predicted() -> None:
    model, predictions = FakeModel(), pool(wait_s=30.0)
    predictions.arriving = 1
    gone = asyncio.ensure_future(predictions.call(model, rows(1), {}))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    gone.cancel()

    async def kept() -> list[Any]:
        predictions.arrived()
        return await predictions.call(model, rows(2), {})  # type: ignore[arg-type]

    assert await asyncio.wait_for(kept(), timeout=2.0) == [20]
    assert model.calls == [[2]]


async def test_each_loaded_version_has_its_own_batcher() -> None:
    old, new, predictions = FakeModel(version="1"), FakeModel(version="2"), pool()
    await asyncio.gather(
        predictions.call(old, rows(1), {}),  # type: ignore[arg-type]
        predictions.call(new, rows(2), {}),  # type: ignore[arg-type]
        predictions.call(old, rows(3), {}),  # type: ignore[arg-type]
    )
    assert old.calls == [[1, 3]] and new.calls == [[2]]  # a swap never mixes versions in one call


def test_predict_jobs_isolates_errors_without_an_event_loop() -> None:
    model = FakeModel()
    results, row_wise = predict_jobs(model.predict, [(rows(1), {}), (rows(2, bad=True), {}), (rows(3), {})])
    assert results[0] == [10] and isinstance(results[1], ValueError) and results[2] == [30] and row_wise


@pytest.mark.parametrize("ids", [[1], [1, 2, 3]])
def test_predict_jobs_of_one_request_is_one_call(ids: list[int]) -> None:
    model = FakeModel()
    assert predict_jobs(model.predict, [(rows(*ids), {})]) == ([[i * 10 for i in ids]], True)
    assert model.calls == [ids]
