"""The traces a gateway writes leave its process: a child process builds them and writes them to MLflow.

The request path only decides whether a prediction's trace is wanted now (`domain/served.trace_wanted`)
and hands its `ServedRequest` to a bounded queue (`submit`, never blocking). A writer thread serialises
it (pydantic JSON) onto the stdin pipe of one child process
(`python -m services.gateway.adapters.trace_writer`), which builds the MLflow trace
(`trace_builder.build_trace`) and writes batches of them:

- `start_trace(info)` per trace (the only way trace metadata and `client_request_id` reach the server;
  MLflow has no batch call for it), then
- one `log_spans` call for all spans of the batch (the server stores them in one transaction). If the
  server cannot store spans (`log_spans` unsupported), each trace's data is uploaded as an artifact
  instead, like MLflow's own exporter does.

No MLflow tracing runs in the gateway process (no OpenTelemetry span, trace manager or exporter thread per
prediction): the trace id is fixed when the prediction is served and the trace is written under it.
Nothing here can fail a prediction: a full queue drops the trace and counts it
(`flywheel_gateway_trace_exports_total{outcome="dropped"}` and `TRACE_ERRORS`), a dead child is
restarted. The child runs at a lower CPU priority (`nice`). The server side is not cheap: StartTraceV3
costs the MLflow server (one worker, sqlite) about 8-10 ms of CPU per trace on a small machine (roughly
80-100 traces/s), which is why only the traces that are needed are written (a sampled share, errors, rated
predictions). `flush()` waits until everything handed over so far is written; `close()` flushes and stops
the child. When the gateway goes away (EOF on the child's stdin, or SIGTERM/SIGINT to the process group)
the child keeps writing what it has for at most `ExportLimits.drain_s`, then exits.

Protocol: gateway -> child, one `ServedRequest` JSON per line. Child -> gateway (on the child's original
stdout; anything the libraries print goes to stderr), one JSON line per batch with cumulative counts
`{"done": n, "exported": n, "failed": n}`.
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
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

from services.gateway import metrics
from services.gateway.adapters.trace_writer import ExportLimits
from services.gateway.domain.served import ServedRequest

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]

TRACE_EXPORTS = Counter(
    "flywheel_gateway_trace_exports_total",
    "Traces handed to the trace export process, by outcome (exported, failed, dropped)",
    ["outcome"],
)
TRACE_BACKLOG = Gauge(
    "flywheel_gateway_trace_export_backlog", "Traces handed over but not yet written to MLflow"
)

_RESTART_BACKOFF_S = 5.0
_HANDOFF = 512  # traces waiting in the gateway for the writer thread


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    sent: int = 0  # traces written to its stdin
    done: int = 0  # traces it finished (exported or failed)
    exported: int = 0
    failed: int = 0
    reader: threading.Thread | None = None


class TraceExportProcess:
    """Gateway side: bounded queue -> writer thread -> child's stdin; reader thread <- child's acks."""

    def __init__(self, tracking_uri: str, experiment: str, limits: ExportLimits = ExportLimits()) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._limits = limits
        # Only a hand-off buffer: the backlog waits in the child, as JSON, out of this process's heap.
        self._queue: queue.Queue[ServedRequest] = queue.Queue(maxsize=min(limits.max_queue, _HANDOFF))
        self._lock = threading.Lock()
        self._progress = threading.Condition()
        self._stopping = threading.Event()
        self._child: _Child | None = None
        self._writer: threading.Thread | None = None
        self._closed = False
        self._last_spawn = 0.0
        self._submitted = 0  # traces accepted by submit()
        self._finished = 0  # of those: written by a child, failed, or lost with a child that died

    # -- gateway API -------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._writer is not None or self._closed:
                return
            try:
                self._spawn()
            except OSError as exc:  # the writer retries
                log.warning("cannot start the trace export process: %s", exc)
            self._writer = threading.Thread(target=self._write_loop, name="trace-export-writer", daemon=True)
            self._writer.start()
            atexit.register(self.close)

    def submit(self, served: ServedRequest) -> bool:
        """Hand over the prediction whose trace is to be written; never blocks. False (and counted) when
        the queue is full."""
        if self._closed:
            self._drop()
            return False
        if self._writer is None:
            self.start()
        with self._progress:
            try:
                self._queue.put_nowait(served)
            except queue.Full:
                self._drop()
                return False
            self._submitted += 1
        TRACE_BACKLOG.inc()
        return True

    def pending(self) -> int:
        """Traces handed over and not yet written (or failed)."""
        with self._progress:
            return self._submitted - self._finished

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every trace submitted before this call is written to MLflow (or failed)."""
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
        if self._writer is not None:  # it closes the child's stdin after the last queued trace
            self._writer.join(max(0.0, deadline - time.monotonic()))
        child = self._child
        if child is not None:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("trace export process did not finish in %.0fs; killing it", timeout_s)
                child.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(5)
            if child.reader is not None:  # its last acks
                child.reader.join(5)
        if (lost := self.pending()) > 0:
            log.warning("%d traces were not written to MLflow before shutdown", lost)

    # -- child process -----------------------------------------------------------------------------

    def _spawn(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        # MLflow retries a failed StartTraceV3 for up to 500 s; while it does, the backlog only grows.
        env.setdefault("MLFLOW_ASYNC_TRACE_LOGGING_RETRY_TIMEOUT", "30")
        self._last_spawn = time.monotonic()
        argv = [
            sys.executable,
            "-m",
            "services.gateway.adapters.trace_writer",
            self.tracking_uri,
            self.experiment,
            self._limits.to_arg(),
        ]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT)
        child = _Child(proc)
        self._child = child
        child.reader = threading.Thread(
            target=self._read_loop, args=(child,), name="trace-export-reader", daemon=True
        )
        child.reader.start()

    def _live_child(self) -> _Child | None:
        child = self._child
        if child is not None and child.proc.poll() is None:
            return child
        if child is not None:
            log.warning("trace export process exited with %s", child.proc.returncode)
            self._child = None
        if time.monotonic() - self._last_spawn < _RESTART_BACKOFF_S:
            return None
        try:
            self._spawn()
        except OSError as exc:
            log.warning("cannot start the trace export process: %s", exc)
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
            batch = [item]
            while len(batch) < 256:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send(batch)
            except Exception:  # the writer thread must outlive any one batch
                log.exception("trace export batch of %d failed", len(batch))
                self._count_unsent(len(batch))
        child = self._child
        if child is not None and child.proc.stdin is not None:
            with contextlib.suppress(OSError):
                child.proc.stdin.close()

    def _send(self, batch: list[ServedRequest]) -> None:
        lines = []
        for served in batch:
            try:
                lines.append(served.model_dump_json().encode() + b"\n")
            except Exception as exc:  # a request that cannot be serialised (a poison record)
                log.warning("trace %s cannot be serialised, skipped: %r", served.trace_id, exc)
        unsent = len(batch) - len(lines)
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
                log.warning("trace export process is gone: %s", exc)  # the reader counts the loss
        if unsent:
            self._count_unsent(unsent)

    def _count_unsent(self, unsent: int) -> None:
        TRACE_EXPORTS.labels("failed").inc(unsent)
        metrics.TRACE_ERRORS.inc(unsent)
        TRACE_BACKLOG.dec(unsent)
        with self._progress:
            self._finished += unsent
            self._progress.notify_all()

    def _read_loop(self, child: _Child) -> None:
        assert child.proc.stdout is not None
        for raw in child.proc.stdout:
            try:
                ack = json.loads(raw)
                done, exported, failed = int(ack["done"]), int(ack["exported"]), int(ack["failed"])
            except (ValueError, KeyError, TypeError):
                continue
            if exported > child.exported:
                TRACE_EXPORTS.labels("exported").inc(exported - child.exported)
            if failed > child.failed:
                TRACE_EXPORTS.labels("failed").inc(failed - child.failed)
                metrics.TRACE_ERRORS.inc(failed - child.failed)
            TRACE_BACKLOG.dec(done - child.done)
            with self._progress:
                self._finished += done - child.done
                child.done, child.exported, child.failed = done, exported, failed
                self._progress.notify_all()
        child.proc.wait()
        with self._progress:  # whatever the child was sent but did not finish is lost
            lost = child.sent - child.done
            self._finished += lost
            child.done = child.sent
            self._progress.notify_all()
        if lost > 0:
            log.warning("trace export process exited; %d traces lost", lost)
            TRACE_EXPORTS.labels("failed").inc(lost)
            metrics.TRACE_ERRORS.inc(lost)
            TRACE_BACKLOG.dec(lost)

    def _drop(self) -> None:
        TRACE_EXPORTS.labels("dropped").inc()
        metrics.TRACE_ERRORS.inc()
