"""The child side of `child_pipe`: read lines from stdin, handle them in batches, acknowledge on stdout.

Used by the gateway's helper processes (`trace_writer`, `event_relay`). The protocol is described in
`child_pipe`. Libraries' prints go to stderr, so stdout carries only acknowledgements. When the gateway
goes away (EOF on stdin, or SIGTERM/SIGINT to the process group, which reaches the gateway too while it
still hands over what it has queued), the child goes on with what it holds for up to `limits.drain_s`,
then exits.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO

# Handles one batch of lines: (how many were done as asked, how many failed).
BatchHandler = Callable[[list[bytes]], tuple[int, int]]


@dataclass(frozen=True)
class ChildLimits:
    """How a child works: up to `batch_size` lines per handler call (waiting up to `linger_s` after the
    first for more), at `nice` lower CPU priority, holding at most `max_queue` lines, and working on for up
    to `drain_s` once the gateway goes away. Passed to the child as one JSON argument."""

    max_queue: int = 10_000
    batch_size: int = 32
    nice: int = 10
    drain_s: float = 10.0
    linger_s: float = 0.0

    def to_arg(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_arg(cls, arg: str) -> ChildLimits:
        return cls(**json.loads(arg))


def serve(name: str, limits: ChildLimits, make_handler: Callable[[ChildLimits], BatchHandler]) -> None:
    """Run the child until its stdin ends (and its work is done) or the drain deadline passes."""
    acks: IO[str] | None = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, format=f"{name} %(levelname)s %(name)s: %(message)s")
    deadline_started = threading.Event()

    def exit_soon(*_: object) -> None:
        if not deadline_started.is_set():
            deadline_started.set()
            timer = threading.Timer(limits.drain_s, os._exit, args=(0,))
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGINT, exit_soon)
    signal.signal(signal.SIGTERM, exit_soon)
    if limits.nice:
        with contextlib.suppress(OSError):
            os.nice(limits.nice)
    handle = make_handler(limits)
    # Bounded: when it is full the pipe fills, then the gateway's hand-off queue, then items are dropped.
    lines: queue.Queue[bytes | None] = queue.Queue(maxsize=limits.max_queue)

    def read_stdin() -> None:
        for line in sys.stdin.buffer:
            lines.put(line)
        exit_soon()  # EOF: the gateway closed the pipe or died
        lines.put(None)

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    done = ok = failed = 0
    eof = False
    while not eof:
        raw: list[bytes] = []
        item = lines.get()
        until = time.monotonic() + limits.linger_s
        while True:
            if item is None:
                eof = True
                break
            raw.append(item)
            if len(raw) >= limits.batch_size:
                break
            try:
                remaining = until - time.monotonic()
                item = lines.get(timeout=remaining) if remaining > 0 else lines.get_nowait()
            except queue.Empty:
                break
        if raw:
            good, bad = handle(raw)
            ok, failed, done = ok + good, failed + bad, done + len(raw)
        if raw and acks is not None:
            try:
                acks.write(json.dumps({"done": done, "ok": ok, "failed": failed}) + "\n")
            except OSError:  # the gateway is gone; keep going until EOF or the deadline
                with contextlib.suppress(OSError):
                    acks.close()
                acks = None
