"""Per-variant metric windows with bounded memory.

A rollout keeps, per variant, a *step window* (what the analysis compares; reset when the rollout advances,
because each step runs at a different weight and should be judged on its own traffic) and *totals*
(cumulative counts over the whole rollout, for the dashboard and the decision records).

Latency memory is bounded: a step window keeps at most `RolloutPolicy.max_latency_samples` latencies
(default 5,000) as a reservoir sample (Algorithm R) over all successful requests of the step, so the p95
and the rank test see an unbiased sample of the whole step rather than only its last minutes. The
reservoir's "random" slot is a hash of (seed, sample number) instead of an RNG, so the state stays plain
JSON and a replay of the same observations after a restart yields the same sample. Counts are exact.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, Field


class Counts(BaseModel):
    """Exact counters of one variant (no samples): cheap to keep for a whole rollout."""

    requests: int = 0
    errors: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0

    @property
    def feedback(self) -> int:
        return self.thumbs_up + self.thumbs_down

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def thumbs_up_rate(self) -> float | None:
        return self.thumbs_up / self.feedback if self.feedback else None

    def rates(self) -> dict[str, Any]:
        """The counters with their rates, as decisions and status views show them."""
        return {**self.model_dump(), "error_rate": self.error_rate, "thumbs_up_rate": self.thumbs_up_rate}

    def add_inference(self, ok: bool) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1

    def add_feedback(self, thumbs_up: bool) -> None:
        if thumbs_up:
            self.thumbs_up += 1
        else:
            self.thumbs_down += 1


class VariantWindow(Counts):
    """Counts plus a bounded reservoir of latencies of *successful* requests.

    Failed requests count in the error rate only: their latency (an instant rejection or a timeout)
    describes the failure, not the model's serving speed, and would blur the latency comparison.
    """

    latencies_ms: list[float] = Field(default_factory=list)
    latencies_seen: int = 0
    seed: str = ""
    compared: int = Field(default=0, description="Shadow answers compared with the champion's.")
    agreed: int = Field(default=0, description="... of which equal to the champion's.")

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def add_inference(self, ok: bool, latency_ms: float = 0.0, *, capacity: int = 5000) -> None:
        super().add_inference(ok)
        if ok:
            self._offer_latency(latency_ms, capacity)

    def _offer_latency(self, latency_ms: float, capacity: int) -> None:
        self.latencies_seen += 1
        if len(self.latencies_ms) < capacity:
            self.latencies_ms.append(float(latency_ms))
            return
        slot = _slot(self.seed, self.latencies_seen)
        if slot < capacity:
            self.latencies_ms[slot] = float(latency_ms)


def _slot(seed: str, n: int) -> int:
    """Uniform-ish index in [0, n) for the n-th sample (1-based), derived from a hash: Algorithm R."""
    digest = hashlib.blake2b(f"{seed}:{n}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n
