"""The Apache Kafka launcher's decisions, without starting a JVM: broker choice, cache, cluster config."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from services.cli.devstack import kafka, stack
from services.cli.devstack.kafka import KafkaCluster, KafkaNode


def test_explicit_choices_win_and_unknown_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "apache_kafka_availability", lambda env: (False, "no java on PATH"))
    assert stack.choose_embedded_kafka({"FLYWHEEL_EMBEDDED_KAFKA": "tansu"})[0] == "tansu"
    assert stack.choose_embedded_kafka({"FLYWHEEL_EMBEDDED_KAFKA": "APACHE"})[0] == "apache"
    with pytest.raises(ValueError, match="FLYWHEEL_EMBEDDED_KAFKA='redpanda'"):
        stack.choose_embedded_kafka({"FLYWHEEL_EMBEDDED_KAFKA": "redpanda"})


@pytest.mark.parametrize(
    ("available", "expected"),
    [((True, "java 17 on PATH, jars cached"), "apache"), ((False, "no java on PATH"), "tansu")],
)
def test_auto_takes_apache_kafka_when_it_can_run_and_says_why(
    monkeypatch: pytest.MonkeyPatch, available: tuple[bool, str], expected: str
) -> None:
    monkeypatch.setattr(stack, "apache_kafka_availability", lambda env: available)
    broker, reason = stack.choose_embedded_kafka({})
    assert broker == expected and available[1] in reason


def fake_java(tmp_path: Path, version_line: str) -> str:
    path = tmp_path / "java"
    path.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.mark.parametrize(
    ("line", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_402"', 8),
        ("no version here", None),
    ],
)
def test_java_major_reads_the_version_java_prints(tmp_path: Path, line: str, major: int | None) -> None:
    assert kafka.java_major(fake_java(tmp_path, line)) == major


def test_availability_explains_itself(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {"FLYWHEEL_KAFKA_CACHE": str(tmp_path), "FLYWHEEL_KAFKA_VERSION": "3.9.1"}
    monkeypatch.setattr(kafka, "java_major", lambda java=None: 11)
    assert kafka.apache_kafka_availability(env) == (False, "java 11 on PATH, Apache Kafka needs 17+")
    monkeypatch.setattr(kafka, "java_major", lambda java=None: 17)
    monkeypatch.setattr(kafka.shutil, "which", lambda name: None)
    ok, why = kafka.apache_kafka_availability(env)
    assert not ok and "not cached and mvn is not on PATH" in why
    (tmp_path / "3.9.1").mkdir()
    (tmp_path / "3.9.1" / ".complete").write_text("3.9.1")
    assert kafka.apache_kafka_availability(env) == (
        True,
        f"java 17 on PATH, Kafka 3.9.1 jars cached in {tmp_path / '3.9.1'}",
    )


def test_a_complete_cache_is_reused_without_maven(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {"FLYWHEEL_KAFKA_CACHE": str(tmp_path)}
    monkeypatch.setattr(kafka.shutil, "which", lambda name: None)
    with pytest.raises(kafka.KafkaUnavailable, match="mvn is not on PATH"):
        kafka.resolve_jars("9.9.9", env)
    (tmp_path / "9.9.9").mkdir()  # an interrupted download (no marker) is not a cache
    with pytest.raises(kafka.KafkaUnavailable):
        kafka.resolve_jars("9.9.9", env)
    (tmp_path / "9.9.9" / ".complete").write_text("9.9.9")
    assert kafka.resolve_jars("9.9.9", env) == tmp_path / "9.9.9"


def test_cluster_ids_have_kafkas_uuid_form() -> None:
    for _ in range(200):
        cid = kafka.new_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def cluster(n: int) -> KafkaCluster:
    nodes = [KafkaNode(i, 9000 + i, 9100 + i, Path(f"/tmp/k/node-{i}")) for i in range(1, n + 1)]
    return KafkaCluster("3.9.1", Path("/jars"), kafka.new_cluster_id(), nodes)


def test_one_node_runs_everything_with_replication_factor_one() -> None:
    props = cluster(1).server_properties(cluster(1).nodes[0])
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9101"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9001,CONTROLLER://127.0.0.1:9101"
    assert props["offsets.topic.replication.factor"] == props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"


def test_three_nodes_form_one_quorum_with_replication_three_and_min_isr_two() -> None:
    three = cluster(3)
    props = [three.server_properties(n) for n in three.nodes]
    assert {p["controller.quorum.voters"] for p in props} == {
        "1@127.0.0.1:9101,2@127.0.0.1:9102,3@127.0.0.1:9103"
    }
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    assert all(p["default.replication.factor"] == p["offsets.topic.replication.factor"] == "3" for p in props)
    assert all(p["min.insync.replicas"] == p["transaction.state.log.min.isr"] == "2" for p in props)
    assert three.bootstrap_servers == "127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003"
