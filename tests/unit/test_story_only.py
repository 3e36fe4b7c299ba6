"""`flywheel demo`'s terminal shows the demo's story; library logs, warnings and prints go to its log file."""

from __future__ import annotations

import io
import logging
import sys
import warnings
from pathlib import Path

from rich.console import Console

from services.cli.devstack.narrative import story_only


def test_only_the_story_reaches_the_terminal(tmp_path: Path) -> None:
    terminal = io.StringIO()
    console = Console(file=terminal, width=200)
    log_path = tmp_path / "logs" / "demo.log"
    before = logging.getLogger().handlers[:], sys.stdout, sys.stderr
    with story_only(console, log_path):
        console.print("act 1: hot reload")
        logging.getLogger("alembic.runtime").warning("alembic says")
        logging.getLogger("urllib3").warning("urllib3 says")
        logging.getLogger("services.x").info("our own module says")
        warnings.warn("a library warns", UserWarning, stacklevel=1)
        print("🏃 View run at http://mlflow")  # MLflow prints run links on stdout
        sys.stderr.write("Created version '1'\n")  # ... and eprint()s to stderr
    assert terminal.getvalue() == "act 1: hot reload\n"
    logged = log_path.read_text()
    for said in (
        "alembic says",
        "urllib3 says",
        "our own module says",
        "a library warns",
        "View run",
        "Created version",
    ):
        assert said in logged
    assert (logging.getLogger().handlers, sys.stdout, sys.stderr) == before  # all back afterwards
