"""`flywheel history MODEL`: the alias history read from the topics (no service needs to run)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.table import Table

from services.shared.alias_history import History
from services.shared.kafka.history_reader import read_history
from services.shared.settings import FlywheelSettings

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(text: str | None, now: datetime) -> datetime | None:
    """RFC 3339 (a time without zone is refused), or an age like `90m`, `2h`, `7d` before `now`."""
    if text is None:
        return None
    if match := _AGE.match(text.strip()):
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (RFC 3339, or an age such as 2h)") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone (add Z or +00:00)")
    return when


def history_command(
    model: str,
    since: str | None,
    until: str | None,
    holds: bool,
    at: str | None,
    as_json: bool,
    console: Console,
) -> None:
    now = datetime.now(UTC)
    start, end, moment = parse_time(since, now), parse_time(until, now), parse_time(at, now)
    settings = FlywheelSettings()
    found = read_history(
        settings.kafka_bootstrap_servers,
        model,
        None if moment else start,
        moment or end,
        profile=settings.kafka_profile,
        holds=holds,
        limit=100_000,
    )
    if moment is not None:
        live = {alias: found.live_at(alias, moment) for alias in sorted(_aliases(found))}
        if as_json:
            print(json.dumps({"model": model, "at": moment.isoformat(), "aliases": live}, indent=2))
        else:
            for alias, version in live.items():
                console.print(f"{alias}: {'v' + version if version else '-'}")
        return
    if as_json:
        print(found.model_dump_json(indent=2))
    else:
        print_history(found, console)


def _aliases(found: History) -> set[str]:
    return {e.alias for e in found.entries if e.kind == "alias" and e.alias}


def print_history(found: History, console: Console) -> None:
    table = Table(title=f"History of {found.model}")
    for column in ("time (UTC)", "what", "version", "by", "detail"):
        table.add_column(column)
    for e in found.entries:
        when = e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        if e.kind == "alias":
            what = f"{e.alias} {'deleted' if e.version is None else 'set'}"
            version = f"v{e.version}" if e.version else f"(was v{e.previous_version})"
            table.add_row(when, what, version, e.actor or "-", f"via {e.source}")
        else:
            versions = f"v{e.challenger_version} vs v{e.champion_version}"
            detail = f"{e.weight:g}% · {e.reason}"
            table.add_row(when, f"canary {e.decision}", versions, e.actor or "-", detail)
    console.print(table)
    if found.truncated:
        console.print("[yellow]more entries than shown: narrow with --since/--until")
