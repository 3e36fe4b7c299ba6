"""MLflow's environment probes, made cheap in a service process.

On every REST call (request headers: "am I in a Databricks notebook?") and every exported trace ("am I
in Jupyter?") MLflow tries `import dbruntime...`, `from pyspark import ...` and `import IPython`. Where
they are not installed, as in every Flywheel service, each attempt searches the whole `sys.path` on disk
again: measured at ~10% of the gateway's CPU under load (py-spy, `benchmarks/RESULTS.md`). Python takes
a module recorded as `None` in `sys.modules` as absent (the import fails at once), which is what MLflow's
probes conclude anyway. Installed modules are left alone, so nothing changes where a probe could succeed.
"""

from __future__ import annotations

import importlib.util
import sys

PROBED_MODULES = ("IPython", "dbruntime", "pyspark")


def skip_absent_environment_probes() -> list[str]:
    """Mark MLflow's probed modules that are not installed as absent; returns the names marked."""
    marked = []
    for name in PROBED_MODULES:
        if name in sys.modules:
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            sys.modules[name] = None  # type: ignore[assignment]
            marked.append(name)
    return marked
