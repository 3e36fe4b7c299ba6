"""A bounded hand-off from the gateway to a helper process of its own, over the helper's stdin.

Work that is heavy in Python but not needed for the answer — writing MLflow traces (`trace_export`),
producing InferenceRecorded events with kafka-python (`inference_events`) — runs in a child process: there it
costs the other core, not the event loop's GIL. The request path only enqueues (`submit`, never blocking:
a full queue drops the item and counts it). A writer thread encodes items as lines onto the child's stdin;
the child works in batches and answers on its stdout with one JSON line per batch of cumulative counts,
`{"done": n, "ok": n, "failed": n}` (`child_loop.serve`), which a reader thread turns into progress, so
`flush()` can wait until everything handed over so far is finished. A dead child is restarted (at most every
5 s) and what it had not finished is counted as failed. `close()` flushes (bounded) and stops the child;
when the gateway goes away otherwise (EOF on the child's stdin, SIGTERM/SIGINT to the process group) the
child finishes what it has for a bounded time, then exits. Anything the child's libraries print goes to
its stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import Gauge

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
T = TypeVar("T")

_RESTART_BACKOFF_S = 5.0
_HANDOFF = 512  # items waiting in the gateway for the writer thread


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    sent: int = 0  # items written to its stdin
    done: int = 0  # items it finished (ok or failed)
    ok: int = 0
    failed: int = 0
    reader: threading.Thread | None = None


class ChildPipe(Generic[T]):
    """Gateway side: bounded queue -> writer thread -> child's stdin; reader thread <- child's acks.

    `module` is the child's `python -m` module, `args` its arguments; `encode` turns an item into its line
    (without the newline); `outcome(kind, n)` counts what became of items: `ok`, `failed` (by the child,
    or lost with a child that died), `dropped` (the queue was full), `poison` (could not be encoded);
    `backlog` is the gauge of items handed over and not finished; `linger_s` how long the writer thread
    gathers items before one write (each wake-up of it takes the GIL from the event loop)."""

    def __init__(
        self,
        what: str,
        module: str,
        args: list[str],
        encode: Callable[[T], bytes],
        outcome: Callable[[str, int], None],
        backlog: Gauge,
        *,
        max_queue: int,
        handoff: int = _HANDOFF,
        env: Mapping[str, str] | None = None,
        linger_s: float = 0.0,
    ) -> None:
        self.what = what
        self._linger_s = linger_s  # the writer waits this long after an item for more: fewer wake-ups
        self._env = dict(env or {})
        self._module, self._args = module, args
        self._encode, self._outcome, self._backlog = encode, outcome, backlog
        # Only a hand-off buffer: the backlog waits in the child, encoded, out of this process's heap.
        self._queue: queue.Queue[T] = queue.Queue(maxsize=min(max_queue, handoff))
        self._lock = threading.Lock()
        self._progress = threading.Condition()
        self._stopping = threading.Event()
        self._child: _Child | None = None
        self._writer: threading.Thread | None = None
        self._closed = False
        self._last_spawn = 0.0
        self._submitted = 0  # items accepted by submit()
        self._finished = 0  # of those: finished by a child, failed, or lost with a child that died

    # -- gateway API -------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._writer is not None or self._closed:
                return
            try:
                self._spawn()
            except OSError as exc:  # the writer retries
                log.warning("cannot start the %s process: %s", self.what, exc)
            self._writer = threading.Thread(target=self._write_loop, name=f"{self.what}-writer", daemon=True)
            self._writer.start()
            atexit.register(self.close)

    def submit(self, item: T) -> bool:
        """Hand over an item; never blocks. False (and counted) when the queue is full."""
        if self._closed:
            self._drop()
            return False
        if self._writer is None:
            self.start()
        with self._progress:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._drop()
                return False
            self._submitted += 1
        self._backlog.inc()
        return True

    def pending(self) -> int:
        """Items handed over and not yet finished (or failed)."""
        with self._progress:
            return self._submitted - self._finished

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every item submitted before this call is finished by the child (or failed)."""
        deadline = time.monotonic() + timeout_s
        with self._progress:
            target = self._submitted
            while self._finished < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._writer is None or not self._writer.is_alive():
                    return False
                self._progress.wait(min(remaining, 0.2))
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (up to `timeout_s`), then stop the child."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(ValueError):
            atexit.unregister(self.close)
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        if self._writer is not None:  # it closes the child's stdin after the last queued item
            self._writer.join(max(0.0, deadline - time.monotonic()))
        child = self._child
        if child is not None:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s process did not finish in %.0fs; killing it", self.what, timeout_s)
                child.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(5)
            if child.reader is not None:  # its last acks
                child.reader.join(5)
        if (lost := self.pending()) > 0:
            log.warning("%d %s items were not finished before shutdown", lost, self.what)

    # -- child process -----------------------------------------------------------------------------

    def _spawn(self) -> None:
        env = {**self._env, **os.environ} if self._env else dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self._last_spawn = time.monotonic()
        argv = [sys.executable, "-m", self._module, *self._args]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT)
        child = _Child(proc)
        self._child = child
        child.reader = threading.Thread(
            target=self._read_loop, args=(child,), name=f"{self.what}-reader", daemon=True
        )
        child.reader.start()

    def _live_child(self) -> _Child | None:
        child = self._child
        if child is not None and child.proc.poll() is None:
            return child
        if child is not None:
            log.warning("%s process exited with %s", self.what, child.proc.returncode)
            self._child = None
        if time.monotonic() - self._last_spawn < _RESTART_BACKOFF_S:
            return None
        try:
            self._spawn()
        except OSError as exc:
            log.warning("cannot start the %s process: %s", self.what, exc)
            return None
        return self._child

    def _write_loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stopping.is_set():
                    break
                continue
            if self._linger_s > 0:  # asleep, not waiting on the queue: a put would wake it per item
                time.sleep(self._linger_s)
            batch = [item]
            while len(batch) < 256:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send(batch)
            except Exception:  # the writer thread must outlive any one batch
                log.exception("%s batch of %d failed", self.what, len(batch))
                self._finish_unsent(len(batch), "failed")
        child = self._child
        if child is not None and child.proc.stdin is not None:
            with contextlib.suppress(OSError):
                child.proc.stdin.close()

    def _send(self, batch: list[T]) -> None:
        lines = []
        for item in batch:
            try:
                lines.append(self._encode(item) + b"\n")
            except Exception as exc:  # an item that cannot be encoded (a poison record)
                log.error("%s item cannot be encoded, skipped: %r", self.what, exc)
                self._finish_unsent(1, "poison")
        unsent = 0
        child = self._live_child() if lines else None
        if child is None:
            unsent = len(batch)
        else:
            assert child.proc.stdin is not None
            with self._progress:  # counted before the write: the ack may come before write() returns
                child.sent += len(lines)
            try:
                child.proc.stdin.write(b"".join(lines))
                child.proc.stdin.flush()
            except (OSError, ValueError) as exc:
                log.warning("%s process is gone: %s", self.what, exc)  # the reader counts the loss
        if unsent:
            self._finish_unsent(unsent, "failed")

    def _finish_unsent(self, unsent: int, kind: str) -> None:
        self._outcome(kind, unsent)
        self._backlog.dec(unsent)
        with self._progress:
            self._finished += unsent
            self._progress.notify_all()

    def _read_loop(self, child: _Child) -> None:
        assert child.proc.stdout is not None
        for raw in child.proc.stdout:
            try:
                ack = json.loads(raw)
                done, ok, failed = int(ack["done"]), int(ack["ok"]), int(ack["failed"])
            except (ValueError, KeyError, TypeError):
                continue
            if ok > child.ok:
                self._outcome("ok", ok - child.ok)
            if failed > child.failed:
                self._outcome("failed", failed - child.failed)
            self._backlog.dec(done - child.done)
            with self._progress:
                self._finished += done - child.done
                child.done, child.ok, child.failed = done, ok, failed
                self._progress.notify_all()
        child.proc.wait()
        with self._progress:  # whatever the child was sent but did not finish is lost
            lost = child.sent - child.done
            self._finished += lost
            child.done = child.sent
            self._progress.notify_all()
        if lost > 0:
            log.warning("%s process exited; %d items lost", self.what, lost)
            self._outcome("failed", lost)
            self._backlog.dec(lost)

    def _drop(self) -> None:
        self._outcome("dropped", 1)
