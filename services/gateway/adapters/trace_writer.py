"""The trace export child process: reads served requests (one `ServedRequest` JSON per line) on stdin,
builds each one's MLflow trace (`trace_builder`) and writes them to MLflow in batches, at a lower CPU
priority. Started by `trace_export.TraceExportProcess`; the protocol and the reasons are described there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import IO, Any

from mlflow.entities import Trace, TraceInfo

from services.gateway.adapters.trace_builder import build_trace
from services.gateway.domain.served import ServedRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportLimits:
    """How the child exports: `batch_size` traces per MLflow write, at `nice` lower CPU priority,
    holding at most `max_queue` traces, and writing on for up to `drain_s` once the gateway goes away.
    Passed to the child as one JSON argument."""

    max_queue: int = 10_000
    batch_size: int = 32
    nice: int = 10
    drain_s: float = 10.0

    def to_arg(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_arg(cls, arg: str) -> ExportLimits:
        return cls(**json.loads(arg))


def _spans_unsupported(exc: Exception) -> bool:
    return isinstance(exc, NotImplementedError) or "span logging is not supported" in str(exc)


class _Writer:
    """Child side: writes batches of traces to MLflow like `MlflowV3SpanExporter._log_trace`."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        from mlflow.tracing.client import TracingClient

        self.client = TracingClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.experiment_id: str | None = None
        self.spans_supported = True

    def experiment_id_now(self) -> str:
        """The trace experiment's id, created when missing (asked once, then remembered)."""
        if self.experiment_id is None:
            from mlflow import MlflowClient

            client = MlflowClient(self.tracking_uri)
            found = client.get_experiment_by_name(self.experiment)
            self.experiment_id = (
                found.experiment_id if found is not None else client.create_experiment(self.experiment)
            )
        return self.experiment_id

    def build(self, lines: list[bytes]) -> tuple[list[Trace], int]:
        """(traces, unreadable) of a batch of lines; a line that is no ServedRequest is counted, skipped."""
        traces, bad = [], 0
        experiment_id = self.experiment_id_now()
        for line in lines:
            try:
                traces.append(build_trace(ServedRequest.model_validate_json(line), experiment_id))
            except Exception as exc:
                bad += 1
                log.warning("unreadable served request: %s", exc)
        return traces, bad

    def write(self, traces: list[Trace]) -> tuple[int, int]:
        """(exported, failed). Trace infos first (their metadata only travels this way, one call per
        trace: the server handles them one at a time anyway), then all spans of the batch at once."""
        from mlflow.tracing.utils import add_size_stats_to_trace_metadata

        started: list[tuple[Trace, TraceInfo]] = []
        for trace in traces:
            try:
                add_size_stats_to_trace_metadata(trace)
                started.append((trace, self.client.start_trace(trace.info)))
            except Exception as exc:
                log.warning("trace %s not written: %s", trace.info.trace_id, exc)
        failed = len(traces) - len(started)
        by_experiment: dict[str, list[Any]] = defaultdict(list)
        for trace, _ in started:
            if trace.info.experiment_id is not None:
                by_experiment[trace.info.experiment_id].extend(trace.data.spans)
        logged: set[str] = set()
        if self.spans_supported:
            for experiment_id, spans in by_experiment.items():
                try:
                    self.client.log_spans(experiment_id, spans)
                    logged.add(experiment_id)
                except Exception as exc:
                    if _spans_unsupported(exc):
                        self.spans_supported = False
                    else:
                        log.warning("log_spans failed (%s); uploading trace data instead", exc)
        for trace, info in started:
            if trace.info.experiment_id in logged:
                continue
            try:
                self.client._upload_trace_data(info, trace.data)
            except Exception as exc:
                failed += 1
                log.warning("spans of trace %s not written: %s", trace.info.trace_id, exc)
        return len(traces) - failed, failed


def _built(writer: _Writer, raw: list[bytes], patience_s: float) -> tuple[list[Trace], int]:
    """`writer.build(raw)`, retried while MLflow cannot say which experiment the traces go to (a restart
    of the tracking server): after `patience_s` and more the batch is given up, counted as failed."""
    deadline = time.monotonic() + max(patience_s, 30.0)
    delay = 0.5
    while True:
        try:
            return writer.build(raw)
        except Exception as exc:
            if time.monotonic() > deadline:
                log.warning(
                    "%d traces not written: experiment %r unavailable: %s", len(raw), writer.experiment, exc
                )
                return [], len(raw)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _child_main(argv: list[str]) -> None:
    tracking_uri, experiment, limits = argv[0], argv[1], ExportLimits.from_arg(argv[2])
    acks: IO[str] | None = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, format="trace-export %(levelname)s %(name)s: %(message)s")
    deadline_started = threading.Event()

    def exit_soon(*_: object) -> None:
        """The gateway is going away: keep writing what we have for up to `limits.drain_s`, then exit."""
        if not deadline_started.is_set():
            deadline_started.set()
            timer = threading.Timer(limits.drain_s, os._exit, args=(0,))
            timer.daemon = True
            timer.start()

    # A Ctrl-C or SIGTERM to the process group reaches us together with the gateway, which then still
    # hands over what it has queued: drain instead of dying at once.
    signal.signal(signal.SIGINT, exit_soon)
    signal.signal(signal.SIGTERM, exit_soon)
    if limits.nice:
        with contextlib.suppress(OSError):
            os.nice(limits.nice)
    writer = _Writer(tracking_uri, experiment)
    # Bounded: when it is full the pipe fills, then the gateway's hand-off queue, then traces are dropped.
    lines: queue.Queue[bytes | None] = queue.Queue(maxsize=limits.max_queue)

    def read_stdin() -> None:
        for line in sys.stdin.buffer:
            lines.put(line)
        exit_soon()  # EOF: the gateway closed the pipe or died
        lines.put(None)

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    done = exported = failed = 0
    eof = False
    while not eof:
        raw: list[bytes] = []
        item = lines.get()
        while True:
            if item is None:
                eof = True
                break
            raw.append(item)
            if len(raw) >= limits.batch_size:
                break
            try:
                item = lines.get_nowait()
            except queue.Empty:
                break
        traces, unreadable = _built(writer, raw, limits.drain_s) if raw else ([], 0)
        failed += unreadable
        if traces:
            ok, bad = writer.write(traces)
            exported += ok
            failed += bad
        done += len(raw)
        if raw and acks is not None:
            try:
                acks.write(json.dumps({"done": done, "exported": exported, "failed": failed}) + "\n")
            except OSError:  # the gateway is gone; keep draining until EOF or the deadline
                with contextlib.suppress(OSError):
                    acks.close()
                acks = None


if __name__ == "__main__":
    from services.shared.mlflow_environment import skip_absent_environment_probes

    skip_absent_environment_probes()
    _child_main(sys.argv[1:])
