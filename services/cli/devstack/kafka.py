"""Apache Kafka from its Maven Central jars: a single KRaft node or an N-node KRaft cluster on loopback.

The broker our users run, started the way its own scripts start it, without a Docker engine:

- `resolve_jars(version)` runs Maven once on `deploy/kafka/pom.xml` and keeps the jars in a per-user
  cache keyed by version (`~/.cache/flywheel/kafka/<version>/`, `FLYWHEEL_KAFKA_CACHE` moves it); later
  calls reuse it without touching Maven. A cache is complete only once its marker file is written, so an
  interrupted download is redone instead of half-used.
- `start_kafka_cluster(workdir, nodes=N)` formats KRaft storage (`kafka.tools.StorageTool`) and starts
  N `kafka.Kafka` JVMs, each broker + controller, on free loopback ports, heap capped, logs in the
  node's directory. Ready means a Metadata request answers with all N brokers; stop is SIGTERM
  (a controlled shutdown), then SIGKILL.

Replication follows the cluster size: one node runs everything with replication factor 1; three nodes
run the internal topics and new topics with replication factor 3 and `min.insync.replicas=2`, the
shape failover tests need.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from services.cli.devstack.kafka_identity import describe_cluster, new_cluster_id
from services.cli.devstack.process import ManagedProcess, StartupError, free_port, port_open

log = logging.getLogger(__name__)

DEFAULT_KAFKA_VERSION = "3.9.1"
MIN_JAVA_MAJOR = 17
HEAP_MB = 512  # the issue caps it at 768 MiB; 512 is plenty for tests and keeps three nodes small
DEPLOY_DIR = Path(__file__).resolve().parents[3] / "deploy" / "kafka"
_COMPLETE = ".complete"


class KafkaUnavailable(RuntimeError):
    """Apache Kafka cannot run here (no Java 17, no jars and no Maven to fetch them, ...)."""


def kafka_version(env: dict[str, str] | None = None) -> str:
    return (env if env is not None else os.environ).get("FLYWHEEL_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION


def cache_root(env: dict[str, str] | None = None) -> Path:
    env = env if env is not None else dict(os.environ)
    if env.get("FLYWHEEL_KAFKA_CACHE"):
        return Path(env["FLYWHEEL_KAFKA_CACHE"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "flywheel" / "kafka"


def jars_dir(version: str, env: dict[str, str] | None = None) -> Path:
    return cache_root(env) / version


def jars_cached(version: str, env: dict[str, str] | None = None) -> bool:
    return (jars_dir(version, env) / _COMPLETE).exists()


def java_major(java: str | None = None) -> int | None:
    """The major version of `java` on PATH, or None when there is none."""
    java = java or shutil.which("java")
    if not java:
        return None
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def resolve_jars(version: str, env: dict[str, str] | None = None, timeout_s: float = 600.0) -> Path:
    """The directory holding the broker's jars for `version`; fetched with Maven when not cached."""
    target = jars_dir(version, env)
    if (target / _COMPLETE).exists():
        return target
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaUnavailable(f"Kafka {version} jars are not cached in {target} and mvn is not on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    argv = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(DEPLOY_DIR / "pom.xml"),
        "dependency:copy-dependencies",
        f"-Dkafka.version={version}",
        f"-Dkafka.major={version.split('.')[0]}",
        f"-DoutputDirectory={staging}",
    ]
    log.info("fetching Apache Kafka %s jars with Maven into %s", version, target)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise KafkaUnavailable(f"mvn did not fetch Kafka {version} within {timeout_s:.0f}s") from None
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise KafkaUnavailable(f"mvn could not fetch Kafka {version}:\n{tail}")
    (staging / _COMPLETE).write_text(version)
    if target.exists():  # a concurrent fetch finished first, or an incomplete earlier one
        if (target / _COMPLETE).exists():
            shutil.rmtree(staging, ignore_errors=True)
            return target
        shutil.rmtree(target, ignore_errors=True)
    with contextlib.suppress(OSError):
        staging.rename(target)
    if not (target / _COMPLETE).exists():
        raise KafkaUnavailable(f"could not install Kafka jars into {target}")
    return target


def apache_kafka_availability(env: dict[str, str] | None = None) -> tuple[bool, str]:
    """Whether Apache Kafka can run here without fetching anything yet, and why (for `flywheel up`)."""
    version = kafka_version(env)
    major = java_major()
    if major is None:
        return False, "no java on PATH"
    if major < MIN_JAVA_MAJOR:
        return False, f"java {major} on PATH, Apache Kafka needs {MIN_JAVA_MAJOR}+"
    if jars_cached(version, env):
        return True, f"java {major} on PATH, Kafka {version} jars cached in {jars_dir(version, env)}"
    if shutil.which("mvn"):
        return True, f"java {major} on PATH, mvn fetches the Kafka {version} jars"
    return False, f"java {major} on PATH but Kafka {version} jars are not cached and mvn is not on PATH"


@dataclass
class KafkaNode:
    node_id: int
    port: int
    controller_port: int
    directory: Path
    process: ManagedProcess | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()


@dataclass
class KafkaCluster:
    """N KRaft nodes (broker + controller each) sharing one cluster id."""

    version: str
    jars: Path
    cluster_id: str
    nodes: list[KafkaNode]
    heap_mb: int = HEAP_MB
    extra_config: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    # -- configuration ----------------------------------------------------------------------------
    def server_properties(self, node: KafkaNode) -> dict[str, str]:
        n = len(self.nodes)
        replication = str(min(n, 3))
        min_isr = "2" if n >= 3 else "1"
        voters = ",".join(f"{x.node_id}@127.0.0.1:{x.controller_port}" for x in self.nodes)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.directory / "data"),
            "num.partitions": "1",
            "default.replication.factor": replication,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replication,
            # 50 partitions (the default) make the first consumer-group join wait for 50 leaders.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.segment.bytes": str(64 * 1024**2),
            "log.retention.check.interval.ms": "60000",
        }
        props.update(self.extra_config)
        return props

    def _write_config(self, node: KafkaNode) -> Path:
        node.directory.mkdir(parents=True, exist_ok=True)
        path = node.directory / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties(node).items()))
        return path

    def _java_argv(self, node: KafkaNode, main: str, *args: str, heap_mb: int) -> list[str]:
        major = self.version.split(".")[0]
        if major == "3":
            logging_props = [f"-Dlog4j.configuration=file:{DEPLOY_DIR / 'log4j.properties'}"]
        else:
            logging_props = [f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.properties'}"]
        return [
            "java",
            f"-Xmx{heap_mb}m",
            f"-Xms{min(heap_mb, 128)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={node.directory / 'logs'}",
            *logging_props,
            "-cp",
            f"{self.jars}/*",
            main,
            *args,
        ]

    # -- lifecycle --------------------------------------------------------------------------------
    def format(self, node: KafkaNode) -> None:
        config = self._write_config(node)
        if (node.directory / "data" / "meta.properties").exists():
            return  # formatted before: a restarted node keeps its data
        argv = self._java_argv(
            node, "kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c", str(config), heap_mb=256
        )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise StartupError(f"kafka StorageTool format failed for node {node.node_id}:\n{done.stderr}")

    def start_node(self, node: KafkaNode) -> None:
        self.format(node)
        argv = self._java_argv(
            node, "kafka.Kafka", str(node.directory / "server.properties"), heap_mb=self.heap_mb
        )
        node.process = ManagedProcess(
            f"kafka-{node.node_id}", argv, log_path=node.directory / "logs" / "stdout.log"
        ).start()

    def start(self, timeout_s: float = 120.0) -> KafkaCluster:
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(self.format, self.nodes))
        for node in self.nodes:
            self.start_node(node)
        try:
            self.wait_ready(timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, nodes: Iterable[KafkaNode] | None = None, timeout_s: float = 120.0) -> None:
        """Until every expected node accepts connections (its acceptors start last) and every live node's
        Metadata lists the expected ones as brokers, with a controller elected."""
        waiting = list(nodes if nodes is not None else self.nodes)
        expected = {n.node_id for n in waiting}
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.node_id in expected and not node.alive():
                    tail = node.process.tail() if node.process else ""
                    raise StartupError(f"kafka node {node.node_id} exited during start-up:\n{tail}")
            live = [n for n in self.nodes if n.alive()]
            if not all(port_open("127.0.0.1", n.port) for n in waiting):
                time.sleep(0.25)
                continue
            try:
                # Each broker's own view: metadata reaches the brokers one by one, and a client may
                # ask any of them.
                views = {n.node_id: describe_cluster(n.bootstrap) for n in live}
                lagging = {
                    node: sorted(brokers)
                    for node, (brokers, controller) in views.items()
                    if not expected <= brokers or controller is None or controller < 0
                }
                if not lagging:
                    return
                last_error = f"brokers seen by each node {lagging}, expected {sorted(expected)}"
            except Exception as exc:
                last_error = repr(exc)
            time.sleep(0.25)
        raise StartupError(f"Apache Kafka not ready after {timeout_s:.0f}s ({last_error})")

    def stop_node(self, node: KafkaNode, timeout_s: float = 30.0) -> None:
        if node.process is not None:
            node.process.stop(timeout_s)

    def kill_node(self, node: KafkaNode) -> None:
        """kill -9 (crash simulation for failover tests)."""
        if node.process is not None:
            node.process.kill()

    def restart_node(self, node: KafkaNode, timeout_s: float = 120.0) -> None:
        self.start_node(node)
        self.wait_ready([node], timeout_s)

    def stop(self) -> None:
        # Brokers first, in parallel: a controlled shutdown needs the controller quorum still up.
        with ThreadPoolExecutor(max_workers=max(1, len(self.nodes))) as pool:
            list(pool.map(self.stop_node, self.nodes))

    def __enter__(self) -> KafkaCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_kafka_cluster(
    workdir: Path,
    nodes: int = 1,
    *,
    version: str | None = None,
    env: dict[str, str] | None = None,
    heap_mb: int = HEAP_MB,
    extra_config: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    broker_ports: Sequence[int] = (),
) -> KafkaCluster:
    """Start Apache Kafka: `nodes` KRaft nodes, each broker + controller, on free loopback ports (the
    first brokers on `broker_ports` when given)."""
    version = version or kafka_version(env)
    major = java_major()
    if major is None or major < MIN_JAVA_MAJOR:
        raise KafkaUnavailable(f"Apache Kafka needs java {MIN_JAVA_MAJOR}+ on PATH (found {major})")
    jars = resolve_jars(version, env)
    workdir.mkdir(parents=True, exist_ok=True)
    ports = [*broker_ports, *(free_port() for _ in range(nodes - len(broker_ports)))]
    members = [
        KafkaNode(i, port, free_port(), workdir / f"node-{i}") for i, port in enumerate(ports[:nodes], 1)
    ]
    cluster = KafkaCluster(version, jars, new_cluster_id(), members, heap_mb, dict(extra_config or {}))
    return cluster.start(timeout_s)


def main(argv: list[str] | None = None) -> int:
    """`python -m services.cli.devstack.kafka fetch [VERSION ...]`: fill the jar cache (CI, images)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "fetch":
        sys.stderr.write("usage: python -m services.cli.devstack.kafka fetch [VERSION ...]\n")
        return 2
    for version in args[1:] or [kafka_version()]:
        try:
            path = resolve_jars(version)
        except KafkaUnavailable as exc:
            sys.stderr.write(f"Kafka {version}: {exc}\n")
            return 1
        sys.stdout.write(f"Kafka {version}: {len(list(path.glob('*.jar')))} jars in {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
