"""Deprecated stage API kept callable for users of the toolkit Flywheel replaces.

`transition_model_stage` warns (DeprecationWarning) and performs the equivalent alias operations, so
old scripts keep working while every change still flows through aliases (and thus through Flywheel).
"""

from __future__ import annotations

import warnings

from mlflow import MlflowClient

from services.shared.stages import StageAliases, normalize_stage, plan_stage_transition


def transition_model_stage(
    name: str,
    version: str | int,
    stage: str,
    archive_existing: bool = True,
    *,
    client: MlflowClient | None = None,
    aliases: StageAliases | None = None,
) -> list[str]:
    """Deprecated: use `set_model_alias` / `delete_model_alias`. Returns the alias operations done."""
    warnings.warn(
        "transition_model_stage is deprecated: stages map to aliases (Production -> champion, "
        "Staging -> challenger, Archived -> alias removed); call MlflowClient.set_registered_model_alias "
        "or delete_registered_model_alias instead",
        DeprecationWarning,
        stacklevel=2,
    )
    del archive_existing  # an alias has a single holder: the previous one always leaves the stage
    normalize_stage(stage)
    client = client or MlflowClient()
    mapping = aliases or StageAliases()
    registered = client.get_registered_model(name)
    current = {a: str(v) for a, v in (registered.aliases or {}).items()}
    done = []
    for op in plan_stage_transition(current, str(version), stage, mapping):
        if op.op == "set":
            client.set_registered_model_alias(name, op.alias, str(op.version))
            done.append(f"set {op.alias}={op.version}")
        else:
            client.delete_registered_model_alias(name, op.alias)
            done.append(f"delete {op.alias}")
    return done
