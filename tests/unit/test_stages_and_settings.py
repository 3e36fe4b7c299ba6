from __future__ import annotations

import pytest

from services.registry_watcher.settings import WatcherSettings
from services.shared.settings import redact_url
from services.shared.stages import AliasOp, StageAliases, aliases_from_stages, plan_stage_transition


def test_stage_mapping_of_the_migration_plan() -> None:
    m = StageAliases()
    assert m.alias_for("Production") == "champion"
    assert m.alias_for("staging") == "challenger"
    assert m.alias_for("Archived") is None
    assert m.alias_for("None") is None
    with pytest.raises(ValueError, match="unknown stage"):
        m.alias_for("Prod")


def test_promote_staging_version_to_production() -> None:
    current = {"champion": "1", "challenger": "2"}
    assert plan_stage_transition(current, "2", "Production") == [
        AliasOp("delete", "challenger"),
        AliasOp("set", "champion", "2"),
    ]


def test_archive_removes_the_versions_aliases_only() -> None:
    current = {"champion": "1", "challenger": "2", "v1-stable": "1"}
    assert plan_stage_transition(current, "1", "Archived") == [AliasOp("delete", "champion")]
    assert plan_stage_transition(current, "3", "Archived") == []
    assert plan_stage_transition(current, "2", "None") == [AliasOp("delete", "challenger")]


def test_custom_alias_names() -> None:
    names = StageAliases(champion="prod", challenger="canary")
    assert plan_stage_transition({}, "4", "Staging", names) == [AliasOp("set", "canary", "4")]
    assert plan_stage_transition({"canary": "4"}, "4", "Staging", names) == []


def test_aliases_from_stages_takes_newest_version_per_stage() -> None:
    versions = [("1", "Production"), ("3", "Production"), ("2", "Staging"), ("4", "Archived"), ("5", "None")]
    assert aliases_from_stages(versions) == {"champion": "3", "challenger": "2"}


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_MODELS", "iris, wine ,")
    monkeypatch.setenv("FLYWHEEL_POLL_INTERVAL_S", "2.5")
    monkeypatch.setenv("FLYWHEEL_WEBHOOK_SECRET", "top-secret")
    monkeypatch.setenv("REDIS_URL", "redis://:pw@redis:6379/0")
    s = WatcherSettings()
    assert s.models == ["iris", "wine"]
    assert s.watches("iris") and not s.watches("other")
    assert s.poll_interval_s == 2.5
    summary = str(s.safe_summary())
    assert "top-secret" not in summary and "pw@" not in summary


def test_invalid_setting_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_POLL_INTERVAL_S", "-1")
    with pytest.raises(Exception, match="poll_interval_s"):
        WatcherSettings()


def test_redact_url() -> None:
    assert redact_url("postgresql://u:secret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact_url("http://mlflow:5000") == "http://mlflow:5000"


def test_every_canary_knob_reaches_the_rollout_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy is carried from the `canary_*` settings by name: each env var must change the policy."""
    from services.canary_rollout.settings import CanarySettings

    monkeypatch.setenv("FLYWHEEL_CANARY_WEIGHTS", "5,50,100")
    monkeypatch.setenv("FLYWHEEL_CANARY_ALPHA", "0.01")
    monkeypatch.setenv("FLYWHEEL_CANARY_MIN_SAMPLES", "123")
    monkeypatch.setenv("FLYWHEEL_CANARY_WATCH_S", "0")
    monkeypatch.setenv("FLYWHEEL_CANARY_SHADOW_SHARE", "0.25")
    policy = CanarySettings().policy()
    assert policy.weights == (5.0, 50.0, 100.0)
    assert (policy.alpha, policy.min_samples_per_variant, policy.watch_s) == (0.01, 123, 0.0)
    assert policy.shadow_share == 0.25
    carried = {name[len("canary_") :] for name in CanarySettings.model_fields if name.startswith("canary_")}
    reached = carried & set(type(policy).model_fields)
    assert len(reached) == 19, sorted(reached)  # every knob of the policy but min_samples (renamed)
