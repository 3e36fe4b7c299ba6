"""Which port each part of a local stack listens on.

`flywheel up` asks for stable ports: every part on the port it uses when run on its own (MLflow 5000,
Redis 6379, Kafka 9092, a service on its `FLYWHEEL_*_PORT` default: watcher 8070, gateways 8080, 8081, …,
canary rollout 8090), or on a free ephemeral port when that one is taken, and says so. Everything else
(the tests, the demo, the benchmarks) takes ephemeral ports, so that parallel runs never collide.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
from dataclasses import dataclass, field

from services.cli.devstack.process import free_port

MLFLOW_PORT = 5000
REDIS_PORT = 6379
KAFKA_PORT = 9092


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind `host:port` now (as servers do: with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            sock.bind((host, port))
            return True
    return False


def service_default_port(service: str, port_var: str) -> int:
    """The default of `port_var` (FLYWHEEL_WATCHER_PORT, …) in the settings of `service`
    (registry-watcher, …): the port that service listens on when run on its own."""
    module = importlib.import_module(f"services.{service.replace('-', '_')}.settings")
    name = port_var.removeprefix("FLYWHEEL_").lower()
    for value in vars(module).values():
        fields = getattr(value, "model_fields", None)
        if isinstance(value, type) and fields and name in fields:
            return int(fields[name].default)
    raise LookupError(f"{service}: no setting {port_var}")


@dataclass(frozen=True)
class PortChoice:
    default: int
    port: int

    @property
    def moved(self) -> bool:
        return self.port != self.default

    def __str__(self) -> str:
        return f"{self.default} taken → {self.port}" if self.moved else str(self.port)


@dataclass
class Ports:
    """Hands out ports: with `stable`, a part's default when free (recorded per part), else ephemeral."""

    stable: bool = False
    choices: dict[str, PortChoice] = field(default_factory=dict)

    def pick(self, part: str, default: int) -> int:
        if not self.stable:
            return free_port()
        taken = {c.port for name, c in self.choices.items() if name != part}
        port = default
        while port in taken or not port_free(port):
            port = free_port()
        self.choices[part] = PortChoice(default, port)
        return port

    def moved(self, part: str) -> str:
        """'  (8080 taken → 41234)' when `part` did not get its default, else ''."""
        choice = self.choices.get(part)
        return f"  ({choice})" if choice is not None and choice.moved else ""
