"""Quality gates: may a retrained model become `challenger`? (REFERENCE.md, "Quality gates").

Five gates, each a pure function of numbers measured elsewhere:
- `data_schema`: the dataset has the required columns, at least one example, and every example carries
  the fields the model needs (value = number of problems, threshold 0);
- `accuracy`: held-out accuracy of the candidate at or above `min_accuracy`;
- `p95_latency_ratio`: the candidate's p95 single-request latency divided by the baseline's (the
  champion), both timed in the same run on the same rows, interleaved. It fails only when the ratio is
  above `max_p95_latency_ratio` *and* the p95s differ by more than `max_p95_latency_delta_ms` (a 1 ms
  model that takes 2 ms has not regressed in any way that matters). This is the gate that judges
  speed: a ratio measured side by side holds when the machine is loaded (absolute milliseconds do not:
  a busy 2-core host doubles them for both); with no baseline it passes;
- `p95_latency`: the candidate's p95 at or below `max_p95_latency_ms`, an absolute ceiling for
  production (an SLO), generous by default so that load on the training host cannot fail it;
- `no_regression`: candidate accuracy minus the baseline's (the champion on the same held-out set) at
  or above `-max_regression`; with no baseline there is nothing to regress from and the gate passes.

A gate whose measurement is missing (e.g. the model was not trained because the schema check failed)
fails with "not evaluated": a report passes only when every gate was measured and passed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

DATA_SCHEMA = "data_schema"
ACCURACY = "accuracy"
P95_LATENCY = "p95_latency"
P95_LATENCY_RATIO = "p95_latency_ratio"
NO_REGRESSION = "no_regression"
GATE_NAMES = (DATA_SCHEMA, ACCURACY, P95_LATENCY_RATIO, P95_LATENCY, NO_REGRESSION)

# Accuracies are ratios of small integers: 0.96 - 0.94 is not exactly 0.02 in binary floating point.
_EPS = 1e-9
_MAX_LISTED_PROBLEMS = 5


@dataclass(frozen=True)
class GateThresholds:
    min_accuracy: float = 0.8
    max_p95_latency_ms: float = 250.0
    max_regression: float = 0.02
    max_p95_latency_ratio: float = 1.5
    max_p95_latency_delta_ms: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_accuracy <= 1:
            raise ValueError("min_accuracy must be within [0, 1]")
        if self.max_p95_latency_ms <= 0:
            raise ValueError("max_p95_latency_ms must be positive")
        if self.max_p95_latency_ratio <= 0:
            raise ValueError("max_p95_latency_ratio must be positive")
        if self.max_p95_latency_delta_ms < 0:
            raise ValueError("max_p95_latency_delta_ms must not be negative")
        if not 0 <= self.max_regression <= 1:
            raise ValueError("max_regression must be within [0, 1]")


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateReport:
    gates: tuple[GateResult, ...]

    @property
    def passed(self) -> bool:
        return bool(self.gates) and all(g.passed for g in self.gates)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.gates if not g.passed)

    def gate(self, name: str) -> GateResult:
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(name)

    def summary(self) -> str:
        """One line for logs and tags: `passed` or `failed: accuracy, no_regression`."""
        return "passed" if self.passed else "failed: " + ", ".join(self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": list(self.failed),
            "gates": [g.to_dict() for g in self.gates],
        }


@dataclass(frozen=True)
class Measurements:
    """What was measured for one candidate; `None` means "not measured"."""

    columns: Collection[str]
    required_columns: Sequence[str]
    rows: int
    row_problems: Sequence[str] = field(default_factory=tuple)
    accuracy: float | None = None
    latencies_ms: Sequence[float] | None = None
    baseline_accuracy: float | None = None
    baseline_label: str = "champion"
    # The baseline timed on the same rows in the same run, interleaved with the candidate.
    baseline_latencies_ms: Sequence[float] | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within [0, 100]")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def schema_gate(
    columns: Collection[str], required: Sequence[str], rows: int, row_problems: Sequence[str] = ()
) -> GateResult:
    missing = [c for c in required if c not in columns]
    problems = [f"missing columns {missing}"] if missing else []
    if rows <= 0:
        problems.append("no examples")
    problems += list(row_problems)
    count = len(missing) + (rows <= 0) + len(row_problems)
    if not problems:
        return GateResult(DATA_SCHEMA, True, 0.0, 0.0, f"{rows} examples, all required fields present")
    listed = "; ".join(problems[:_MAX_LISTED_PROBLEMS])
    more = len(problems) - _MAX_LISTED_PROBLEMS
    suffix = f" (+{more} more)" if more > 0 else ""
    return GateResult(DATA_SCHEMA, False, float(count), 0.0, f"{listed}{suffix}")


def accuracy_gate(accuracy: float | None, minimum: float) -> GateResult:
    if accuracy is None or math.isnan(accuracy):
        return GateResult(ACCURACY, False, None, minimum, "not evaluated")
    passed = accuracy >= minimum - _EPS
    relation = ">=" if passed else "<"
    return GateResult(
        ACCURACY, passed, accuracy, minimum, f"held-out accuracy {accuracy:.4f} {relation} {minimum}"
    )


def latency_gate(latencies_ms: Sequence[float] | None, maximum_ms: float) -> GateResult:
    if not latencies_ms:
        return GateResult(P95_LATENCY, False, None, maximum_ms, "not evaluated")
    p95 = percentile(latencies_ms, 95)
    passed = p95 <= maximum_ms
    relation = "<=" if passed else ">"
    return GateResult(
        P95_LATENCY,
        passed,
        p95,
        maximum_ms,
        f"p95 latency {p95:.2f} ms {relation} {maximum_ms} ms over {len(latencies_ms)} requests",
    )


def latency_ratio_gate(
    latencies_ms: Sequence[float] | None,
    baseline_latencies_ms: Sequence[float] | None,
    maximum_ratio: float,
    baseline_label: str = "champion",
    maximum_delta_ms: float = 0.0,
) -> GateResult:
    """value = candidate p95 / baseline p95, both measured side by side in one run; fails when the ratio
    exceeds `maximum_ratio` and the difference exceeds `maximum_delta_ms`."""
    if not latencies_ms:
        return GateResult(P95_LATENCY_RATIO, False, None, maximum_ratio, "not evaluated")
    if not baseline_latencies_ms:
        return GateResult(
            P95_LATENCY_RATIO, True, None, maximum_ratio, f"no {baseline_label} timed to compare with"
        )
    p95, base = percentile(latencies_ms, 95), percentile(baseline_latencies_ms, 95)
    ratio = p95 / base if base > 0 else (1.0 if p95 <= 0 else math.inf)
    within_ratio = ratio <= maximum_ratio + _EPS
    within_delta = p95 - base <= maximum_delta_ms + _EPS
    passed = within_ratio or within_delta
    relation = "<=" if within_ratio else ">"
    slack = f" but only {p95 - base:+.2f} ms <= {maximum_delta_ms} ms" if not within_ratio and passed else ""
    return GateResult(
        P95_LATENCY_RATIO,
        passed,
        ratio,
        maximum_ratio,
        f"p95 {p95:.2f} ms vs {baseline_label} {base:.2f} ms on the same rows: "
        f"ratio {ratio:.2f} {relation} {maximum_ratio}{slack}",
    )


def regression_gate(
    candidate: float | None, baseline: float | None, tolerance: float, baseline_label: str = "champion"
) -> GateResult:
    """value = candidate - baseline (the improvement); threshold = -tolerance."""
    if candidate is None or math.isnan(candidate):
        return GateResult(NO_REGRESSION, False, None, -tolerance, "not evaluated")
    if baseline is None:
        return GateResult(NO_REGRESSION, True, None, -tolerance, f"no {baseline_label} to compare with")
    delta = candidate - baseline
    passed = delta >= -tolerance - _EPS
    verb = "within" if passed else "beyond"
    return GateResult(
        NO_REGRESSION,
        passed,
        delta,
        -tolerance,
        f"accuracy {candidate:.4f} vs {baseline_label} {baseline:.4f} "
        f"({delta:+.4f}, {verb} tolerance {tolerance})",
    )


def evaluate_gates(m: Measurements, thresholds: GateThresholds) -> GateReport:
    return GateReport(
        (
            schema_gate(m.columns, m.required_columns, m.rows, m.row_problems),
            accuracy_gate(m.accuracy, thresholds.min_accuracy),
            latency_ratio_gate(
                m.latencies_ms,
                m.baseline_latencies_ms,
                thresholds.max_p95_latency_ratio,
                m.baseline_label,
                thresholds.max_p95_latency_delta_ms,
            ),
            latency_gate(m.latencies_ms, thresholds.max_p95_latency_ms),
            regression_gate(m.accuracy, m.baseline_accuracy, thresholds.max_regression, m.baseline_label),
        )
    )
