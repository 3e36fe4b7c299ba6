"""`flywheel up`'s ports: a part's default when free, an ephemeral port when taken (and said so); without
stable ports (tests, demo, benchmarks) always ephemeral."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from services.cli.devstack.ports import PortChoice, Ports, port_free, service_default_port


@pytest.fixture
def listening() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def vacant() -> int:
    """A port nobody listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_default_when_free(vacant: int) -> None:
    ports = Ports(stable=True)
    assert ports.pick("gateway-1", vacant) == vacant
    assert ports.choices["gateway-1"] == PortChoice(vacant, vacant)
    assert ports.moved("gateway-1") == ""


def test_an_ephemeral_port_when_the_default_is_taken_and_it_says_so(listening: int) -> None:
    ports = Ports(stable=True)
    port = ports.pick("gateway-1", listening)
    assert port != listening and port_free(port)
    assert ports.moved("gateway-1") == f"  ({listening} taken → {port})"


def test_two_parts_never_get_the_same_default(vacant: int) -> None:
    ports = Ports(stable=True)
    first, second = ports.pick("gateway-1", vacant), ports.pick("gateway-2", vacant)
    assert first == vacant and second != vacant
    assert ports.pick("gateway-1", vacant) == vacant  # a restarted part gets its port back


def test_without_stable_ports_always_ephemeral(vacant: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.cli.devstack.ports.free_port", lambda: 40001)
    ports = Ports()
    assert ports.pick("gateway-1", vacant) == 40001
    assert ports.choices == {} and ports.moved("gateway-1") == ""


def test_service_defaults_come_from_their_settings() -> None:
    assert service_default_port("registry-watcher", "FLYWHEEL_WATCHER_PORT") == 8070
    assert service_default_port("gateway", "FLYWHEEL_GATEWAY_PORT") == 8080
    assert service_default_port("canary-rollout", "FLYWHEEL_CANARY_PORT") == 8090
    assert service_default_port("cache-invalidation", "FLYWHEEL_INVALIDATION_WEB_PORT") == 6070
    with pytest.raises(LookupError):
        service_default_port("gateway", "FLYWHEEL_NO_SUCH_PORT")
