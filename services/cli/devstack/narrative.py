"""A command whose terminal tells only its own story (`flywheel demo`): what libraries say goes to a file.

Inside `story_only(console, log_path)` the console keeps the terminal, and everything else the process
emits goes to `log_path`: log records of every library (MLflow, alembic, urllib3, kafka, httpx, …) and of
our own modules, Python warnings, what libraries print on stdout or stderr (MLflow's "View run" links and
"Created version" lines), and tracebacks of background threads. The services and embedded servers are
child processes that already write their own log files (`ManagedProcess`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from services.shared.logging_setup import configure_logging


@contextlib.contextmanager
def story_only(console: Console, log_path: Path, name: str = "flywheel") -> Iterator[None]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handlers, level, file = root.handlers[:], root.level, console.file
    console.file = file  # bound now: the story keeps the terminal once sys.stdout is redirected
    with (
        log_path.open("a", buffering=1, encoding="utf-8", errors="replace") as sink,
        # MLflow's own handler and eprint() write to whatever sys.stderr is at the time: the file, too.
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        configure_logging("INFO", name)  # to sys.stdout, that is the file; chatty libraries at WARNING
        logging.captureWarnings(True)
        try:
            yield
        finally:
            logging.captureWarnings(False)
            root.handlers[:] = handlers
            root.setLevel(level)
            console.file = file
