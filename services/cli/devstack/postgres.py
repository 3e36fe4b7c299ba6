"""A throwaway PostgreSQL server for MLflow's backend store: the database production MLflow runs on.

The test suite runs MLflow on it (several workers, the stable webhook key) so that what users run is what
is tested — `docker-compose.yml` runs MLflow on PostgreSQL too; SQLite stays the zero-setup default of
`flywheel up` (`FLYWHEEL_EMBEDDED_MLFLOW_DB`, `stack.py`).

The server is Debian's `postgresql` package (`/usr/lib/postgresql/<major>/bin`, or `initdb` on PATH): a
cluster of its own under the work directory (`initdb`, trust authentication, listening on 127.0.0.1 only),
stopped with the stack. PostgreSQL refuses to run as root, so as root it runs as the package's `postgres`
user (`setpriv`). `fsync` is off: the cluster is thrown away with the run, and durability is not what the
tests are about.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from services.cli.devstack.process import ManagedProcess, StartupError, free_port, port_open

DATABASE = "mlflow"
USER = "flywheel"


def postgres_bindir() -> Path | None:
    """The directory of `initdb` and `postgres`: the newest Debian cluster version, else PATH."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def postgres_available() -> bool:
    """Whether PostgreSQL can be started here (its binaries, and a non-root user when we are root)."""
    if postgres_bindir() is None:
        return False
    return os.geteuid() != 0 or _postgres_user() is not None


def _postgres_user() -> tuple[int, int] | None:
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _as_server_user(argv: list[str]) -> list[str]:
    """`argv`, run as the `postgres` user when we are root (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def _own(path: Path) -> None:
    """As root: `path` becomes the `postgres` user's, and every directory above it lets that user pass
    (the search bit only: pytest makes its temporary directories 0700)."""
    ids = _postgres_user() if os.geteuid() == 0 else None
    if ids is None:
        return
    for item in [path, *path.rglob("*")]:
        os.chown(item, *ids)
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def start_postgres(
    workdir: Path, port: int | None = None, timeout_s: float = 60.0
) -> tuple[ManagedProcess, str]:
    """(the server, the SQLAlchemy URL of its `mlflow` database)."""
    bindir = postgres_bindir()
    if bindir is None:
        raise StartupError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    port = port or free_port()
    data = workdir / "data"
    workdir.mkdir(parents=True, exist_ok=True)
    _own(workdir)
    if not (data / "PG_VERSION").exists():
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust"]
        initdb += ["--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"]
        subprocess.run(_as_server_user(initdb), check=True, capture_output=True, timeout=120)
    argv = _as_server_user(
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(workdir),  # its unix socket here, not in /var/run/postgresql
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",  # MLflow's workers keep pools of their own
        ]
    )
    # SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for every client to disconnect first).
    proc = ManagedProcess("postgres", argv, log_path=workdir / "postgres.log", stop_signal=signal.SIGINT)
    proc.start().wait_ready(lambda: port_open("127.0.0.1", port), timeout_s)
    _create_database(port, timeout_s)
    return proc, f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{DATABASE}"


def _create_database(port: int, timeout_s: float) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection = psycopg2.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres")
            break
        except psycopg2.OperationalError:  # accepting connections only once recovery finished
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        connection.close()
