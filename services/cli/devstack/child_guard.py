"""`python -m services.cli.devstack.child_guard PARENT_PID -- PROGRAM ARGS...`: run PROGRAM so that it dies
with the process that started it.

`flywheel up` starts eleven processes (MLflow, Redis, the Kafka JVM, seven services); killed with SIGKILL
(a hung terminal, a supervisor's stop timeout) it cannot stop them, and they would run on as orphans with
their ports and memory. Linux's `PR_SET_PDEATHSIG` makes the kernel send a signal to a process when its
parent dies; this guard sets it (SIGTERM, so each part still stops cleanly), checks that the parent did not
die already in between, then replaces itself with PROGRAM (`exec`: same pid, the setting kept). On other
systems it only execs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, separator, *program = argv
    if separator != "--" or not program:
        raise SystemExit("usage: child_guard PARENT_PID -- PROGRAM [ARGS...]")
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise SystemExit(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")
        if os.getppid() != int(parent):  # the parent died before the setting took: follow it now
            raise SystemExit(0)
    os.execvp(program[0], program)  # noqa: S606 - the program and its arguments, as the caller gave them


if __name__ == "__main__":
    main(sys.argv[1:])
