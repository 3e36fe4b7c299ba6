"""Feedback aggregation against the real stack: Redis, the Kafka-protocol broker, MLflow, the worker as a
subprocess (`flywheel run feedback-aggregation`).

Expected counts come from `Reference`, a deliberately simple re-statement of the counting rules (one
inference per request, one vote per (request, user), the newest vote wins), not from the core under test.
Each test has its own Redis prefix, consumer group and model names.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import mlflow
import pytest
import redis
from mlflow import MlflowClient

from events import (
    DATASETS_PUBLISHED,
    FEEDBACK_RECORDED,
    INFERENCES,
    RETRAINING_REQUESTED,
    DatasetPublished,
    Event,
    FeedbackRecorded,
    InferenceRecorded,
    RetrainingRequested,
    encode,
)
from services.cli.devstack.process import free_port
from services.cli.devstack.stack import Endpoints
from services.feedback_aggregation.adapters.dataset_publisher import (
    DatasetPublisher,
    Pending,
    PublicationResult,
    dataset_name_for,
)
from services.feedback_aggregation.adapters.dataset_writer import read_rows
from services.feedback_aggregation.adapters.mlflow_datasets import (
    TAG_ALIAS,
    TAG_NAME,
    TAG_PUBLICATION,
    TAG_VERSION,
    DatasetRegistry,
)
from services.feedback_aggregation.adapters.store import FeedbackStore
from services.feedback_aggregation.domain.aggregates import apply, new_state
from services.feedback_aggregation.domain.examples import ExampleRow, build_examples
from services.feedback_aggregation.domain.triggers import (
    TriggerDecision,
    TriggerState,
    rate_window_start,
    signal_from,
)
from services.feedback_aggregation.handlers import FeedbackService, ModelView
from services.feedback_aggregation.settings import FeedbackSettings
from services.shared.consumer import Message
from services.shared.dataset_manifest import verify_manifest
from services.shared.feedback_summary import read_summary, read_summary_sync
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.redis_store import RedisKeys, async_redis
from tests.support import TopicReader, also_on_tansu, caught_up, unique
from tests.support.feedback import (
    DOWN,
    UP,
    WAIT_S,
    Events,
    Reference,
    Worker,
    records,
    reference_of,
    summary_counts,
    wait_until,
)

pytestmark = pytest.mark.integration


def trigger_points(events: Sequence[Event], min_corrections: int, start_after: int = 0) -> list[int]:
    """Indexes of the events at which the corrections trigger fires (no cooldown, no rate trigger)."""
    ref, points, at_last = Reference(), [], 0
    for i, event in enumerate(events):
        ref.add(event)
        if i < start_after:
            continue
        corrections = ref.counts()["corrections"]
        if corrections - at_last >= min_corrections:
            points.append(i)
            at_last = corrections
    return points


def in_process_settings(stack: Endpoints, keys: RedisKeys, **overrides: Any) -> FeedbackSettings:
    """Settings of a worker run in the test's process on the test's Redis prefix, with the retraining
    triggers out of reach unless `overrides` bring them back (most tests count, they do not retrain)."""
    defaults = {
        "redis_url": stack.redis_url,
        "redis_prefix": keys.prefix,
        "feedback_min_corrections": 10**6,
        "feedback_min_sample": 10**6,
    }
    return FeedbackSettings(**{**defaults, **overrides})


def as_delivered(events: Sequence[Event]) -> list[Message]:
    """The events as a consumer gets them from partition 0 of their topics: offsets count per topic."""
    offsets = {INFERENCES: 0, FEEDBACK_RECORDED: 0}
    delivered: list[Message] = []
    for event in events:
        topic = INFERENCES if isinstance(event, InferenceRecorded) else FEEDBACK_RECORDED
        delivered.append(Message(topic, 0, offsets[topic], encode(event), event))
        offsets[topic] += 1
    return delivered


async def handle(service: FeedbackService, message: Message) -> str:
    """One event through the service's per-event path; its outcome ("counted", "redelivered", ...)."""
    return await service.handle(message.topic, message.partition, message.offset, message.value)


@pytest.fixture()
def worker_factory(stack: Endpoints, tmp_path: Path, keys: RedisKeys) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def make(models: Sequence[str], **env: str) -> Worker:
        worker = Worker(
            stack,
            tmp_path / "logs",
            {
                "FLYWHEEL_REDIS_PREFIX": keys.prefix,
                "FLYWHEEL_MODELS": ",".join(models),
                "FLYWHEEL_FEEDBACK_GROUP_ID": unique("fa-group"),
                "FLYWHEEL_FEEDBACK_WEB_PORT": str(free_port()),
                "FLYWHEEL_DATASET_DIR": str(tmp_path / "datasets"),
                "FLYWHEEL_LOG_LEVEL": "INFO",
                **env,
            },
        )
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


# --- persistence and idempotency, in process -----------------------------------------------------


async def test_state_survives_restart_redelivery_and_a_concurrent_writer(stack: Endpoints) -> None:
    """Offsets already applied are skipped, a fresh process rebuilds the exact state from snapshot +
    journal, and a stale in-memory copy (another worker wrote meanwhile) reloads instead of overwriting."""
    keys = RedisKeys(unique("fa-inproc"))
    settings = in_process_settings(stack, keys, feedback_snapshot_every=7)
    model = unique("fa_p")
    make = Events(model)
    events: list[Event] = []
    for i in range(30):
        events.append(make.inference(f"r{i}", str(1 + i % 2), error=i % 7 == 0))
    for i in range(30):
        events.append(
            make.feedback(
                f"r{i}", str(1 + i % 2), f"u{i % 4}", DOWN if i % 3 else UP, [0] if i % 5 == 0 else None
            )
        )
    events += events[:5] + events[30:35]  # producer-side duplicates (same events at new offsets)
    events.append(make.feedback("r1", "2", "u1", UP))  # the user changed their mind
    ref = reference_of(events)
    delivered = as_delivered(events)

    client = async_redis(stack.redis_url)
    try:
        first = FeedbackService(settings, FeedbackStore(client, keys), None)
        outcomes = [await handle(first, m) for m in delivered[:50]]
        assert outcomes.count("counted") == 50
        # A redelivery (crash before the offsets were committed) changes nothing, not even `duplicates`.
        assert {await handle(first, m) for m in delivered[20:50]} == {"redelivered"}

        # A second process resumes from Redis alone (snapshot every 7 events + the journal since).
        second = FeedbackService(settings, FeedbackStore(client, keys), None)
        assert {await handle(second, m) for m in delivered[:50]} == {"redelivered"}
        for m in delivered[50:60]:
            await handle(second, m)
        # `first` still holds the model as of 50 events: its write is refused, it reloads and skips.
        assert await handle(first, delivered[55]) == "redelivered"
        for m in delivered[60:]:
            await handle(first, m)
        assert await handle(second, delivered[-1]) == "redelivered"

        summary = await read_summary(client, keys, model)
        assert summary is not None
        assert summary["applied_events"] == len(delivered)
        assert summary_counts(summary) == ref.counts()
        for version in ("1", "2"):
            assert summary_counts(summary, version) == ref.counts(version)
            assert summary["versions"][version]["duplicates"] == ref.duplicates[version]
        third = FeedbackService(settings, FeedbackStore(client, keys), None)
        view = await third.view(model)
        assert {v: s.to_json() for v, s in view.states.items()} == {
            v: s.to_json() for v, s in (await first.view(model)).states.items()
        }
    finally:
        await client.aclose()


class CrashingStore(FeedbackStore):
    """A store whose process is killed at its `crash_at`-th batch write: before the write reaches Redis,
    or after (the effect is stored, the batch was never acknowledged). Cancellation ends the handler
    as a kill ends the worker: nothing after it runs, no retry."""

    def __init__(self, client: Any, keys: RedisKeys, crash_at: int, after_write: bool) -> None:
        super().__init__(client, keys)
        self.crash_at, self.after_write, self.calls = crash_at, after_write, 0

    async def append_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.crash_at and not self.after_write:
            raise asyncio.CancelledError
        result = await super().append_batch(*args, **kwargs)
        if self.calls == self.crash_at:
            raise asyncio.CancelledError
        return result


@pytest.mark.parametrize("after_write", [False, True], ids=["before-the-write", "after-the-write"])
async def test_a_batch_killed_mid_way_is_applied_exactly_once(stack: Endpoints, after_write: bool) -> None:
    """Two models interleaved on one partition (plus an inferences partition), applied in batches; the
    process dies in the middle of one (before or after its Redis write, never acknowledged); a new
    process gets everything from before the last *committed* batch again, cut into other batches.
    Every event is counted once, per model, and the summaries catch up after the throttled writes."""
    keys = RedisKeys(unique("fa-batch"))
    settings = in_process_settings(
        stack, keys, feedback_snapshot_every=9, feedback_batch_max=10, feedback_summary_interval_ms=300
    )
    models = [unique("fa_ba"), unique("fa_bb")]
    makers = {m: Events(m) for m in models}
    events: list[Event] = []
    for i in range(60):
        make = makers[models[i % 3 % 2]]  # A, B, A, A, B, A, ...: uneven interleaving
        events.append(make.inference(f"r{i}", str(1 + i % 2), error=i % 9 == 0))
        events.append(
            make.feedback(
                f"r{i}", str(1 + i % 2), f"u{i % 4}", DOWN if i % 3 else UP, [1] if i % 5 == 0 else None
            )
        )
    events += events[10:16]  # producer-side duplicates at new offsets
    delivered = as_delivered(events)

    client = async_redis(stack.redis_url)
    try:
        doomed = FeedbackService(
            settings, CrashingStore(client, keys, crash_at=7, after_write=after_write), None
        )
        batches = [delivered[i : i + 10] for i in range(0, len(delivered), 10)]
        committed = 0  # index of the first message whose offset Kafka has not committed
        for n, batch in enumerate(batches):
            try:
                await doomed.handle_batch(batch)
            except asyncio.CancelledError:
                break
            committed = 10 * max(0, n - 1)  # commits lag one batch behind the acks
        else:
            raise AssertionError("the process was never killed")
        assert doomed.store.calls == 7  # type: ignore[attr-defined]

        restarted = FeedbackService(settings, FeedbackStore(client, keys), None)
        rest = delivered[committed:]
        for i in range(0, len(rest), 7):  # other batch boundaries than before the kill
            await restarted.handle_batch(rest[i : i + 7])
        await restarted.tick()  # what the summary timer would write (no need to wait for it)
        for model in models:
            mine = [e for e in events if getattr(e, "model", None) == model]
            ref = reference_of(mine)
            summary = await read_summary(client, keys, model)
            assert summary is not None
            assert summary["applied_events"] == len(mine)
            assert summary_counts(summary) == ref.counts()
            for version in ("1", "2"):
                assert summary["versions"][version]["duplicates"] == ref.duplicates[version]
            fresh = FeedbackService(settings, FeedbackStore(client, keys), None)
            assert {v: s.to_json() for v, s in (await fresh.view(model)).states.items()} == {
                v: s.to_json() for v, s in (await restarted.view(model)).states.items()
            }
        await restarted.close()
    finally:
        await client.aclose()


def test_the_services_trigger_signal_is_the_cores() -> None:
    """`FeedbackService._signal` (a fast path, run per event) gives `core.triggers.signal_from`'s numbers."""
    settings = FeedbackSettings(feedback_bucket_s=60, feedback_window_s=300)
    service = FeedbackService(settings, cast(FeedbackStore, None), None)
    model = "fa_signal"
    make = Events(model)
    view = ModelView(model)
    start = make.now
    for i in range(400):
        version = str(1 + i % 3)
        at = start + timedelta(seconds=7 * i)
        event = make.feedback(
            f"r{i % 150}", version, f"u{i % 5}", DOWN if i % 4 else UP, [1] if i % 6 == 0 else None, at=at
        )
        apply(view.states.setdefault(version, new_state(model, version)), event, service.config)
        for now in (at, at + timedelta(seconds=61)):
            for trigger in (TriggerState(), TriggerState(at - timedelta(seconds=100), 3)):
                view.trigger = trigger
                since = rate_window_start(service.policy, trigger, now)
                assert service._signal(view, now) == signal_from(view.states.values(), service.config, since)


class ScriptedPublisher:
    """Stands in for DatasetPublisher: records each attempt, fails while `fail` is set."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.calls: list[tuple[str, int]] = []

    def run(self, pending: Pending, feedback_raw: Sequence[str]) -> PublicationResult:
        self.calls.append((pending.publication_id, len(feedback_raw)))
        if self.fail:
            raise RuntimeError("MLflow unreachable")
        return PublicationResult(pending.publication_id, pending.reason, None, "1", False, len(feedback_raw))


async def test_a_pending_publication_survives_the_worker_and_keeps_its_examples(stack: Endpoints) -> None:
    """The trigger's decision, the advanced trigger state and the frozen feedback buffer are stored
    together; a new process resumes the same publication with the same feedback, later feedback waits
    for the next dataset."""
    keys = RedisKeys(unique("fa-pending"))
    settings = in_process_settings(
        stack, keys, feedback_min_corrections=3, feedback_cooldown_s=0, feedback_lease_s=2
    )
    model = unique("fa_q")
    make = Events(model)
    feedback = [make.feedback(f"r{i}", "1", "u", DOWN, [i] if i % 2 else None) for i in range(9)]
    client = async_redis(stack.redis_url)
    crashing, healthy = ScriptedPublisher(fail=True), ScriptedPublisher(fail=False)
    try:
        first = FeedbackService(settings, FeedbackStore(client, keys), cast(DatasetPublisher, crashing))
        for offset, event in enumerate(feedback):  # the 3rd correction is the 6th event (index 5)
            await first.handle(FEEDBACK_RECORDED, 0, offset, encode(event))
        wait_s = 0.0
        while not crashing.calls and wait_s < 10:
            await asyncio.sleep(0.05)
            wait_s += 0.05
        await first.close()  # the worker dies with its publication failing
        summary = await read_summary(client, keys, model)
        assert summary is not None and summary["pending_publication"] is not None
        pending_id = summary["pending_publication"]["publication_id"]
        assert crashing.calls[0] == (pending_id, 6)
        assert summary["trigger"]["corrections_at_last_trigger"] == 3

        second = FeedbackService(settings, FeedbackStore(client, keys), cast(DatasetPublisher, healthy))
        await second.restore()

        async def finished() -> dict[str, Any] | None:
            s = await read_summary(client, keys, model)
            return s if s and s["pending_publication"] is None else None

        for _ in range(400):
            if done := await finished():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the pending publication was not resumed")
        assert healthy.calls == [(pending_id, 6)]
        assert done["last_publication"]["publication_id"] == pending_id
        assert await client.llen(second.store.key("buffer", model)) == 3  # feedback after the trigger
        assert not await client.exists(second.store.key("pending-buffer", model))
        await second.close()
    finally:
        await client.aclose()


# --- the worker: exact counts, datasets, MLflow --------------------------------------------------


def test_counts_are_exact_and_corrections_publish_versioned_datasets(
    stack: Endpoints,
    stack_env: dict[str, str],
    publisher: KafkaPublisher,
    redis_client: redis.Redis,
    keys: RedisKeys,
    worker_factory: Callable[..., Worker],
) -> None:
    model = unique("fa_ds")
    make = Events(model)
    min_corrections = 20
    inferences = [
        make.inference(f"r{i:03d}", "2" if i % 4 == 0 else "1", error=i % 10 == 3) for i in range(80)
    ]
    batch_a: list[Event] = []
    for i in range(60):
        version = "2" if i % 4 == 0 else "1"
        corrected = [i % 3] if i % 2 == 0 and i < 50 else None
        batch_a.append(
            make.feedback(f"r{i:03d}", version, f"u{i % 3}", DOWN if i % 2 == 0 else UP, corrected)
        )
        if i < 10:  # the same user submits again: one vote (newest wins)
            batch_a.append(
                make.feedback(f"r{i:03d}", version, f"u{i % 3}", DOWN if i % 2 == 0 else UP, corrected)
            )
    for i in (51, 53):  # thumbs up revised to thumbs down
        batch_a.append(make.feedback(f"r{i:03d}", "1", f"u{i % 3}", DOWN))
    batch_a.append(make.feedback("r001", "1", "u1", DOWN, at=make.now - timedelta(seconds=5)))  # older vote
    batch_a += batch_a[:5]  # exact redeliveries from the producer side
    first_stream: list[Event] = [*inferences, *inferences[:10], *batch_a]

    worker = worker_factory(
        [model],
        FLYWHEEL_FEEDBACK_MIN_CORRECTIONS=str(min_corrections),
        FLYWHEEL_FEEDBACK_MIN_SAMPLE="1000000",
        FLYWHEEL_FEEDBACK_COOLDOWN_S="0",
        FLYWHEEL_FEEDBACK_TICK_S="1",
    ).start()
    datasets, requests = TopicReader(stack, DATASETS_PUBLISHED), TopicReader(stack, RETRAINING_REQUESTED)
    try:
        started = time.monotonic()
        publisher.publish_sync(records(first_stream))
        ref = reference_of(first_stream)
        wait_until(
            lambda: summary_counts(read_summary_sync(redis_client, keys, model)) == ref.counts(),
            what="exact counts of the first stream",
        )
        print(
            f"\n{len(first_stream)} events counted in {time.monotonic() - started:.2f} s (incl. publishing)"
        )
        # The batch consumer reports its lag too: every assigned partition of both topics, back at 0.
        lag = wait_until(lambda: caught_up(worker.lag()), WAIT_S, "flywheel_consumer_lag_messages at 0")
        assert {topic for topic, _ in lag} == {INFERENCES, FEEDBACK_RECORDED}

        fb_a = [e for e in first_stream if isinstance(e, FeedbackRecorded)]
        points = trigger_points(fb_a, min_corrections)
        assert len(points) == 1
        published1 = datasets.wait_for(lambda e: getattr(e, "model", None) == model, 1, WAIT_S)
        request1 = requests.wait_for(lambda e: getattr(e, "model", None) == model, 1, WAIT_S)
        assert len(published1) == 1 and len(request1) == 1
        ds1, rr1 = published1[0], request1[0]
        assert isinstance(ds1, DatasetPublished) and isinstance(rr1, RetrainingRequested)
        buffer1 = fb_a[: points[0] + 1]
        expected1 = build_examples(buffer1, model=model).rows
        check_dataset(stack, ds1, 1, expected1, tmp=Path(worker.logdir) / "download1")
        versions1 = Counter(e.version for e in {e.event_id: e for e in buffer1}.values())
        assert rr1.reason == "corrections" and rr1.base_version == versions1.most_common(1)[0][0]
        assert (rr1.dataset_name, rr1.dataset_version, rr1.dataset_run_id) == (
            dataset_name_for(model),
            1,
            ds1.run_id,
        )
        assert rr1.metrics["new_corrections"] == min_corrections and rr1.metrics["rows"] == ds1.rows
        wait_until(
            lambda: (s := read_summary_sync(redis_client, keys, model)) and s["pending_publication"] is None,
            what="publication 1 finished",
        )

        # Batch B: 20 more corrections; the trigger fires again after 20 *new* ones (5 were left over).
        batch_b: list[Event] = []
        for i in range(100, 120):
            batch_b.append(make.inference(f"r{i}", "2"))
            batch_b.append(make.feedback(f"r{i}", "2", "u9", DOWN, [2]))
        publisher.publish_sync(records(batch_b))
        all_events = [*first_stream, *batch_b]
        ref = reference_of(all_events)
        published2 = datasets.wait_for(lambda e: getattr(e, "model", None) == model, 2, WAIT_S)
        assert [e.dataset_version for e in published2] == [1, 2]  # type: ignore[attr-defined]
        ds2 = published2[1]
        assert isinstance(ds2, DatasetPublished)
        fb_all = [e for e in all_events if isinstance(e, FeedbackRecorded)]
        points = trigger_points(fb_all, min_corrections)
        assert len(points) == 2
        expected2 = build_examples(fb_all[points[0] + 1 : points[1] + 1], model=model).rows
        check_dataset(stack, ds2, 2, expected2, tmp=Path(worker.logdir) / "download2")

        # `latest` moved to version 2; version 1 is still there, without the alias.
        registry = DatasetRegistry(stack.mlflow_tracking_uri)
        runs = registry.versions(dataset_name_for(model))
        assert [(r.data.tags[TAG_VERSION], r.data.tags.get(TAG_ALIAS)) for r in runs] == [
            ("1", None),
            ("2", "latest"),
        ]
        latest = registry.latest(dataset_name_for(model))
        assert latest is not None and latest.info.run_id == ds2.run_id

        def final() -> dict[str, Any] | None:
            s = read_summary_sync(redis_client, keys, model)
            ok = s and s["pending_publication"] is None and summary_counts(s) == ref.counts()
            return s if ok else None

        summary = wait_until(final, what="final summary")
        for version in ("1", "2"):
            assert summary_counts(summary, version) == ref.counts(version)
            assert summary["versions"][version]["duplicates"] == ref.duplicates[version]
        assert summary["applied_events"] == len(all_events)
        assert summary["last_publication"]["dataset_version"] == 2
        assert summary["last_publication"]["run_id"] == ds2.run_id
        requests.settle(1.0)
        assert len(requests.events(lambda e: getattr(e, "model", None) == model)) == 2
    finally:
        datasets.close()
        requests.close()


def check_dataset(
    stack: Endpoints, event: DatasetPublished, version: int, expected: list[ExampleRow], tmp: Path
) -> None:
    """The MLflow run of a DatasetPublished: conventions, artifacts, manifest hashes, rows."""
    assert event.dataset_version == version
    assert event.rows == len(expected) and event.corrected_rows == sum(
        r.source == "corrected" for r in expected
    )
    assert event.aliases == ["latest"] and {f.format for f in event.files} == {"jsonl", "parquet"}
    client = MlflowClient(tracking_uri=stack.mlflow_tracking_uri)
    run = client.get_run(event.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "flywheel/feedback-datasets"
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    for tag in ("os.user", "git.commit", "source.type", "model.type", "run.mode"):
        assert tags.get(tag), tag
    assert tags["source.type"] == "service" and tags["run.mode"] == "training"
    assert tags[TAG_NAME] == event.dataset_name and tags[TAG_VERSION] == str(version)
    assert run.data.params["rows"] == str(event.rows)
    assert run.data.metrics["rows"] == event.rows
    assert run.data.metrics["corrected_rows"] == event.corrected_rows
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == event.manifest_sha256[:36]
    artifacts = {a.path for a in client.list_artifacts(event.run_id, "dataset")}
    assert artifacts == {"dataset/examples.jsonl", "dataset/examples.parquet", "dataset/manifest.json"}
    assert event.artifact_uri.endswith("/dataset")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=event.artifact_uri, dst_path=str(tmp)))
    manifest = verify_manifest(local, expected_sha256=event.manifest_sha256)
    assert manifest["rows"] == event.rows and manifest["dataset_version"] == version
    assert list(read_rows(local / "examples.parquet")) == expected
    assert list(read_rows(local / "examples.jsonl")) == expected


# --- kill -9 mid-burst -----------------------------------------------------------------------------


@also_on_tansu
def test_kill_9_mid_burst_then_restart_counts_exactly(
    publisher: KafkaPublisher,
    redis_client: redis.Redis,
    keys: RedisKeys,
    worker_factory: Callable[..., Worker],
) -> None:
    model = unique("fa_k")
    make = Events(model)
    events: list[Event] = []
    for i in range(200):
        events.append(make.inference(f"r{i}", "1" if i % 3 else "2", error=i % 11 == 0))
    feedback: list[Event] = []
    for i in range(560):
        request = i % 200
        version = "1" if request % 3 else "2"
        user = f"u{i // 200}"
        corrected = [request % 3] if i % 7 == 0 else None
        feedback.append(make.feedback(f"r{request}", version, user, UP if i % 4 else DOWN, corrected))
    for i in range(0, 40):  # repeated (request, user) submissions: revisions and same-vote repeats
        request = i * 5
        version = "1" if request % 3 else "2"
        feedback.append(make.feedback(f"r{request}", version, "u0", DOWN if i % 2 else UP))
    assert len(feedback) == 600
    part1 = [*events, *feedback[:300], *feedback[:20]]  # + duplicates at new offsets
    part2 = [*feedback[300:], *events[:30], *feedback[290:310]]
    ref = reference_of([*part1, *part2])

    worker = worker_factory(
        [model],
        FLYWHEEL_FEEDBACK_MIN_CORRECTIONS="1000000",
        FLYWHEEL_FEEDBACK_MIN_SAMPLE="1000000",
        FLYWHEEL_FEEDBACK_SNAPSHOT_EVERY="100",
    ).start()

    def applied() -> int:
        summary = read_summary_sync(redis_client, keys, model)
        return int(summary["applied_events"]) if summary else 0

    def publish_part1() -> None:
        # Paced (25 events every 0.1 s, about 2 s in all): the kill at >= 150 applied comes while most of
        # the burst is still unpublished, however fast the worker applies what it gets.
        for start in range(0, len(part1), 25):
            publisher.publish_sync(records(part1[start : start + 25]))
            time.sleep(0.1)

    sender = threading.Thread(target=publish_part1)
    sender.start()
    wait_until(lambda: applied() >= 150, what="the worker to be mid-burst")
    worker.kill()
    at_kill = applied()
    sender.join(timeout=WAIT_S)
    assert not sender.is_alive()
    print(f"\nkilled the worker after {at_kill} of {len(part1)} events of the first burst")
    assert at_kill < len(part1), "the worker finished the burst before the kill; nothing was tested"

    restarted = time.monotonic()
    worker.start(wait_assigned=False)
    sent = time.monotonic()
    publisher.publish_sync(records(part2))
    publish_s = time.monotonic() - sent
    total = len(part1) + len(part2)
    wait_until(lambda: applied() >= total, what="every event applied after the restart")
    done = time.monotonic()
    print(
        f"restart -> all {total} events applied in {done - restarted:.1f} s "
        f"({total - at_kill} events after the kill; publishing part 2 took {publish_s:.1f} s)"
    )
    time.sleep(1.0)  # anything still in flight would show up now as a double count
    summary = read_summary_sync(redis_client, keys, model)
    assert summary is not None
    assert summary["applied_events"] == total  # each message applied exactly once
    assert summary_counts(summary) == ref.counts()
    for version in ("1", "2"):
        assert summary_counts(summary, version) == ref.counts(version)
        assert summary["versions"][version]["duplicates"] == ref.duplicates[version]
    resumes = worker.log().count("skipping redelivered")
    print(
        f"exact after restart: {summary_counts(summary)}; partitions resumed past applied offsets: {resumes}"
    )


# --- publication crash safety ----------------------------------------------------------------------


def test_a_retried_publication_reuses_its_run_and_never_adds_a_version(
    stack: Endpoints, stack_env: dict[str, str], publisher: KafkaPublisher, tmp_path: Path
) -> None:
    model = unique("fa_c")
    make = Events(model)
    feedback = [make.feedback(f"r{i}", "3", "u", DOWN, [i % 3]) for i in range(5)]
    raw = [encode(e).decode() for e in feedback]
    decision = TriggerDecision(True, "corrections", "5 new corrections >= 5", {"new_corrections": 5.0})
    registry = DatasetRegistry(stack.mlflow_tracking_uri)
    name = dataset_name_for(model)

    def new_publisher() -> DatasetPublisher:  # a fresh process: nothing remembered but MLflow and Redis
        return DatasetPublisher(
            DatasetRegistry(stack.mlflow_tracking_uri), publisher, tmp_path, lambda m: "1"
        )

    reader = TopicReader(stack, DATASETS_PUBLISHED)
    try:
        # 1. The worker died while logging: an incomplete run of the publication is left behind.
        first = Pending.new(model, decision, make.tick())
        registry.client.create_run(
            registry.experiment_id(),
            tags={TAG_NAME: name, TAG_VERSION: "1", TAG_PUBLICATION: first.publication_id},
        )
        result = new_publisher().run(first, raw)
        assert not result.resumed and result.dataset is not None and result.dataset.version == 1
        assert [r.info.run_id for r in registry.versions(name)] == [result.dataset.run_id]

        # 2. The worker died after logging, before announcing: the retry finds the run, adds no version.
        second = Pending.new(model, decision, make.tick())
        rows = build_examples(feedback, model=model).rows
        logged, resumed = new_publisher().ensure_logged(second, rows)
        assert logged is not None and logged.version == 2 and not resumed
        retried = new_publisher().run(second, raw)
        assert retried.resumed and retried.dataset is not None
        assert (retried.dataset.run_id, retried.dataset.version) == (logged.run_id, 2)
        assert retried.dataset.manifest_sha256 == logged.manifest_sha256
        assert [r.data.tags[TAG_VERSION] for r in registry.versions(name)] == ["1", "2"]

        # 3. The worker died after announcing, before clearing the pending publication: same event ids.
        again = new_publisher().run(second, raw)
        assert again.event_ids == retried.event_ids and again.dataset is not None
        assert again.dataset.run_id == logged.run_id
        events = reader.wait_for(lambda e: getattr(e, "model", None) == model, 3, 30)
        assert [e.event_id for e in events] == [
            f"{first.publication_id}.dataset-published",
            f"{second.publication_id}.dataset-published",
            f"{second.publication_id}.dataset-published",
        ]
        assert len({e.run_id for e in events}) == 2  # type: ignore[attr-defined]
    finally:
        reader.close()
