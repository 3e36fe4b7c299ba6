"""Tracking conventions every run Flywheel creates follows (the toolkit we replace: REFERENCE.md)."""

from __future__ import annotations

import getpass
import subprocess


def standard_tags(model_type: str, run_mode: str = "training") -> dict[str, str]:
    """The tags every run we create carries (tracking conventions)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "os.user": getpass.getuser(),
        "git.commit": commit or "unknown",
        "source.type": "service",
        "model.type": model_type,
        "run.mode": run_mode,
    }
