"""Stage -> alias compatibility (pure): the migration plan's mapping of registry stages onto aliases.

Production -> champion, Staging -> challenger, Archived -> alias removed, None -> no alias. Alias names
are configurable. Used by the deprecated `transition_model_stage` shim and by the poller's stage mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

STAGES = ("None", "Staging", "Production", "Archived")


@dataclass(frozen=True)
class StageAliases:
    champion: str = "champion"
    challenger: str = "challenger"

    def alias_for(self, stage: str) -> str | None:
        """The alias a stage maps to; None for Archived/None (no alias)."""
        normalized = normalize_stage(stage)
        if normalized == "Production":
            return self.champion
        if normalized == "Staging":
            return self.challenger
        return None

    @property
    def managed(self) -> tuple[str, str]:
        return (self.champion, self.challenger)


def normalize_stage(stage: str) -> str:
    for known in STAGES:
        if stage.strip().lower() == known.lower():
            return known
    raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")


@dataclass(frozen=True)
class AliasOp:
    op: Literal["set", "delete"]
    alias: str
    version: str | None = None


def plan_stage_transition(
    current: Mapping[str, str], version: str, stage: str, aliases: StageAliases = StageAliases()
) -> list[AliasOp]:
    """Alias operations equivalent to moving `version` to `stage`.

    A version has one stage, so it loses the stage aliases it held; the target stage's alias moves to
    it (which is what `archive_existing=True` meant: the previous holder leaves that stage).
    """
    target = aliases.alias_for(stage)
    ops = [
        AliasOp("delete", alias)
        for alias in aliases.managed
        if current.get(alias) == version and alias != target
    ]
    if target is not None and current.get(target) != version:
        ops.append(AliasOp("set", target, version))
    return ops


def aliases_from_stages(
    version_stages: Iterable[tuple[str, str]], aliases: StageAliases = StageAliases()
) -> dict[str, str]:
    """Alias view of a registry that still uses stages: the newest version in each mapped stage."""
    best: dict[str, int] = {}
    for version, stage in version_stages:
        alias = aliases.alias_for(stage)
        if alias is None:
            continue
        if alias not in best or int(version) > best[alias]:
            best[alias] = int(version)
    return {alias: str(v) for alias, v in best.items()}
