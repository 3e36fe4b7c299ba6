"""The MLflow Model Registry as Flywheel sees it: aliases per model, stages, webhooks.

A thin adapter over `MlflowClient` so that services depend on a handful of intention-revealing calls
rather than on the whole client. Blocking (MLflow's client is synchronous): call from a thread in
async code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

PROMPT_TAG = "mlflow.prompt.is_prompt"


def alias_version(client: MlflowClient, model: str, alias: str) -> str | None:
    """The version `alias` of `model` points to now; None when the alias (or the model) does not exist."""
    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "INVALID_PARAMETER_VALUE" in str(exc):
            return None
        raise


def experiment_id_of(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created when missing (another worker may be creating it too)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created concurrently
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


@dataclass(frozen=True)
class VersionStage:
    version: str
    stage: str


class RegistryAdapter:
    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # --- reading -------------------------------------------------------------------------------
    def _registered_models(self) -> Iterable[RegisteredModel]:
        token: str | None = None
        while True:
            page = self.client.search_registered_models(max_results=200, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    @staticmethod
    def _is_prompt(model: RegisteredModel) -> bool:
        tags = model.tags or {}
        return str(tags.get(PROMPT_TAG, "")).lower() == "true"

    def aliases(self, models: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
        """model -> {alias: version} for the given models (all non-prompt models when None)."""
        if models is None:
            return {
                m.name: {a: str(v) for a, v in (m.aliases or {}).items()}
                for m in self._registered_models()
                if not self._is_prompt(m)
            }
        result: dict[str, dict[str, str]] = {}
        for name in models:
            try:
                model = self.client.get_registered_model(name)
            except Exception as exc:  # a watched model may not exist yet
                if "RESOURCE_DOES_NOT_EXIST" in str(exc):
                    result[name] = {}
                    continue
                raise
            result[name] = {a: str(v) for a, v in (model.aliases or {}).items()}
        return result

    def version_stages(self, model: str) -> list[VersionStage]:
        versions = self.client.search_model_versions(filter_string=f"name='{model}'", max_results=1000)
        return [VersionStage(str(v.version), v.current_stage or "None") for v in versions]

    def version_by_alias(self, model: str, alias: str) -> str | None:
        return alias_version(self.client, model, alias)

    # --- writing -------------------------------------------------------------------------------
    def set_alias(self, model: str, alias: str, version: str | int) -> None:
        self.client.set_registered_model_alias(model, alias, str(version))

    def delete_alias(self, model: str, alias: str) -> None:
        self.client.delete_registered_model_alias(model, alias)


class ExperimentRef:
    """An experiment by name: its id is looked up (created when missing) on first use, then kept."""

    def __init__(self, client: MlflowClient, name: str) -> None:
        self._client, self.name = client, name
        self._id: str | None = None

    def id(self) -> str:
        if self._id is None:
            self._id = experiment_id_of(self._client, self.name)
        return self._id
