"""Which `flywheel up` stacks run on this machine: one record per running `up` (its pid, workdir, the pids
of what it started and their addresses), so the next `up` can say that a stack of its own still holds the
ports, and stop what an `up` killed before it could stop its children left behind.

Records live in `~/.cache/flywheel/up/` (`FLYWHEEL_UP_REGISTRY` moves them). A process counts as the one
recorded only while its command line is still the recorded one, so a recycled pid is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


def registry_dir() -> Path:
    configured = os.environ.get("FLYWHEEL_UP_REGISTRY")
    base = Path(configured) if configured else Path.home() / ".cache" / "flywheel" / "up"
    base.mkdir(parents=True, exist_ok=True)
    return base


def cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


@dataclass
class UpRecord:
    pid: int
    workdir: str
    started_at: float
    command: str
    children: dict[str, int] = field(default_factory=dict)  # name -> pid
    commands: dict[str, str] = field(default_factory=dict)  # pid -> command line when recorded
    addresses: dict[str, str] = field(default_factory=dict)  # name -> URL or host:port

    @property
    def path(self) -> Path:
        return registry_dir() / f"{self.pid}.json"

    def save(self) -> None:
        self.path.write_text(json.dumps(asdict(self), indent=1))

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def up_alive(self) -> bool:
        return cmdline(self.pid) == self.command

    def orphans(self) -> dict[str, int]:
        """The recorded children still running as recorded."""
        return {
            name: pid
            for name, pid in self.children.items()
            if (seen := cmdline(pid)) is not None and seen == self.commands.get(str(pid))
        }


def records() -> list[UpRecord]:
    found = []
    for path in sorted(registry_dir().glob("*.json")):
        try:
            found.append(UpRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            with contextlib.suppress(OSError):
                path.unlink()
    return found


def record_this(workdir: Path) -> UpRecord:
    me = os.getpid()
    record = UpRecord(me, str(workdir), time.time(), cmdline(me) or "")
    record.save()
    return record


def stop_orphans(record: UpRecord, timeout_s: float = 10.0) -> dict[str, int]:
    """SIGTERM (then SIGKILL) what a dead `up` left running; returns what was stopped."""
    orphans = record.orphans()
    for pid in orphans.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and record.orphans():
        time.sleep(0.2)
    for pid in record.orphans().values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    record.remove()
    return orphans
