"""A registry is not its namespace: the watcher's alias state belongs to one MLflow registry.

The alias state in Redis is what the watcher last published for each model; the poller publishes the
difference between the registry and that state. Pointed at a *different* registry (a new MLflow server,
the same Redis namespace), that difference is "every alias was deleted" — and the watcher would tell
every gateway to unload its champion. So the registry gets an identity of its own, stored *in* the
registry (a tag on a dedicated experiment, created once, idempotently), and the alias state records the
identity it belongs to. At start the two are compared: the same registry goes on; an empty namespace is
bound; a different registry is refused — nothing is published — unless the operator says to adopt the
namespace (FLYWHEEL_REGISTRY_ADOPT=true), which drops the old state so that the new registry's aliases
are published as they are, never as deletions. Blocking (MLflow's client): call from a thread.
"""

from __future__ import annotations

import logging
import uuid

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

IDENTITY_EXPERIMENT = "flywheel/registry-identity"
IDENTITY_TAG = "flywheel.registry_id"


def registry_identity(client: MlflowClient) -> str:
    """The registry's identity (created on first use; two watchers starting at once agree)."""
    for _ in range(3):
        experiment = client.get_experiment_by_name(IDENTITY_EXPERIMENT)
        if experiment is not None:
            identity = (experiment.tags or {}).get(IDENTITY_TAG)
            if identity:
                return str(identity)
            client.set_experiment_tag(experiment.experiment_id, IDENTITY_TAG, uuid.uuid4().hex)
            continue  # read it back: another watcher may have set its own in between
        try:
            client.create_experiment(IDENTITY_EXPERIMENT, tags={IDENTITY_TAG: uuid.uuid4().hex})
        except MlflowException:  # created concurrently: read the winner's
            log.debug("registry identity created concurrently")
    raise RuntimeError(f"cannot read the registry identity from experiment {IDENTITY_EXPERIMENT!r}")
