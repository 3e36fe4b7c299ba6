"""A subprocess with a log file, a readiness probe and a clean stop (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
        return True
    return False


class StartupError(RuntimeError):
    pass


def python_module(module: str, *args: str) -> list[str]:
    """argv running a Python tool of this environment (`mlflow`, `uvicorn`, ...) with this interpreter:
    works from `.venv/bin/flywheel` without the venv's bin on PATH."""
    return [sys.executable, "-m", module, *args]


def with_this_python_on_path(env: Mapping[str, str] | None) -> dict[str, str]:
    """`env` (default: ours) with this interpreter's bin directory first on PATH, so tools that start
    their own helpers by name (MLflow's scoring server, uvicorn) find this environment's."""
    merged = dict(os.environ if env is None else env)
    bindir = str(Path(sys.executable).parent)
    path = merged.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        merged["PATH"] = os.pathsep.join(p for p in (bindir, path) if p)
    return merged


_die_with_parent = False


def die_with_this_process() -> None:
    """Processes started from now on (from the main thread) die when this process dies, even by SIGKILL
    (`child_guard`). `flywheel up` and `flywheel demo` call it first: nothing they start outlives them.

    Only from the main thread, because the kernel ties the signal to the thread that started the child:
    a child started from a short-lived thread would die with that thread."""
    global _die_with_parent
    _die_with_parent = True


def _guarded(argv: list[str]) -> list[str]:
    if not _die_with_parent or threading.current_thread() is not threading.main_thread():
        return argv
    return [sys.executable, "-m", "services.cli.devstack.child_guard", str(os.getpid()), "--", *argv]


def stop_all(processes: Sequence[ManagedProcess], timeout_s: float = 10.0) -> None:
    """Stop several processes at once: SIGTERM to all, then wait for each until a common deadline, and
    SIGKILL what is left. A clean stop takes as long as the slowest part, not the sum of all."""
    running = [p for p in processes if p.alive()]
    for process in running:
        process.signal(process.stop_signal)
    deadline = time.monotonic() + timeout_s
    for process in running:
        assert process.proc is not None
        try:
            process.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal  # what asks it to stop (PostgreSQL: SIGINT, its fast shutdown)
        self.argv = list(argv)
        self.log_path = log_path
        self.env = with_this_python_on_path(env)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            _guarded(self.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # its own process group: stop() reaches its children too
        )
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float = 60.0) -> ManagedProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartupError(f"{self.name} exited during start-up; see {self.log_path}:\n{self.tail()}")
            if probe():
                return self
            time.sleep(0.05)
        raise StartupError(f"{self.name} not ready after {timeout_s}s; see {self.log_path}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9 the whole process group (crash simulation)."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(self.stop_signal)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
