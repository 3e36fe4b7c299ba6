"""The 3-node Apache Kafka cluster of the launcher: replication 3, `min.insync.replicas=2`, and a
partition leader killed with SIGKILL loses no acknowledged record (acks=all, idempotent producer)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from services.cli.devstack.kafka import KafkaCluster, apache_kafka_availability, start_kafka_cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    ok, why = apache_kafka_availability()
    if not ok:
        pytest.skip(f"Apache Kafka cannot run here: {why}")
    with start_kafka_cluster(tmp_path_factory.mktemp("kafka3"), nodes=3) as running:
        yield running


def leader_of(admin: KafkaAdminClient, topic: str) -> int:
    (described,) = admin.describe_topics([topic])
    (partition,) = described["partitions"]
    return int(partition["leader_id"])


def produce(bootstrap: str, topic: str, values: range) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap.split(","), acks="all", enable_idempotence=True, retries=2**31 - 1
    )
    try:
        for i in values:
            producer.send(topic, key=b"model", value=str(i).encode())
        producer.flush(timeout=60)
    finally:
        producer.close()


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got: list[int] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                got += [int(r.value) for r in batch]
    finally:
        consumer.close()
    return got


def test_killing_the_leader_loses_no_acknowledged_record(cluster: KafkaCluster) -> None:
    bootstrap = cluster.bootstrap_servers
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        brokers = {b["broker_id"] for b in admin.describe_cluster()["brokers"]}
        assert brokers == {1, 2, 3}
        admin.create_topics(
            [NewTopic("failover", 1, 3, topic_configs={"min.insync.replicas": "2"})], timeout_ms=30000
        )
        produce(bootstrap, "failover", range(0, 500))
        leader = leader_of(admin, "failover")
    finally:
        admin.close()

    victim = next(n for n in cluster.nodes if n.node_id == leader)
    cluster.kill_node(victim)
    survivors = ",".join(n.bootstrap for n in cluster.nodes if n is not victim)
    produce(survivors, "failover", range(500, 1000))  # acks=all still works with 2 of 3 in sync

    admin = KafkaAdminClient(bootstrap_servers=survivors.split(","))
    try:
        assert leader_of(admin, "failover") != leader
    finally:
        admin.close()
    assert read_all(survivors, "failover", 1000) == list(range(1000))

    cluster.restart_node(victim)  # rejoins with its data; the cluster is whole again
    assert victim.alive()
