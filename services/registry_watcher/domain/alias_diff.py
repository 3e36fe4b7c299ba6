"""Diffing the registry's aliases against Flywheel's alias state (used by the poller)."""

from __future__ import annotations

from collections.abc import Mapping

from services.registry_watcher.domain.webhook import AliasObservation


def diff_aliases(
    model: str, stored: Mapping[str, str], observed: Mapping[str, str], observed_at: float | None = None
) -> list[AliasObservation]:
    """Observations that bring `stored` to `observed`: moved/new aliases, then removed ones (sorted)."""
    changes = [
        AliasObservation(model, alias, version, observed_at)
        for alias, version in sorted(observed.items())
        if stored.get(alias) != version
    ]
    changes.extend(
        AliasObservation(model, alias, None, observed_at) for alias in sorted(stored) if alias not in observed
    )
    return changes
