"""MLflow's environment probes: absent modules are marked absent once, installed ones are untouched."""

from __future__ import annotations

import sys

import pytest

from services.shared import mlflow_environment


def test_absent_probed_modules_fail_fast_and_installed_ones_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mlflow_environment, "PROBED_MODULES", ("flywheel_surely_absent_mod", "json"))
    monkeypatch.delitem(sys.modules, "flywheel_surely_absent_mod", raising=False)
    marked = mlflow_environment.skip_absent_environment_probes()
    try:
        assert marked == ["flywheel_surely_absent_mod"]
        with pytest.raises(ImportError):
            import flywheel_surely_absent_mod  # type: ignore[import-not-found]  # noqa: F401
        import json

        assert json.dumps([1]) == "[1]"  # an installed module still imports
    finally:
        sys.modules.pop("flywheel_surely_absent_mod", None)
