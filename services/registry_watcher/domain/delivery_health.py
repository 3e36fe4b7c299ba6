"""Whether webhook deliveries reach the watcher, judged from what the poller had to repair (pure).

Every alias change should arrive as a delivery first (≈ 13 ms after the write); the poller, running every
`FLYWHEEL_POLL_INTERVAL_S`, finds nothing left to do. When it does find a change no delivery brought (a
*repair*), a delivery failed — and a webhook that fails for good leaves Flywheel on the poller alone,
silently. So: the first repair starts `failing` (since then), with the likely causes; it ends once a whole
`window_s` passed without a repair and a delivery arrived after the last one. Repairs within `grace_s` of
the watcher's start do not count: MLflow caches its webhook list (60 s by default), so a webhook registered
a moment ago fires only after that, and a restart repairs what happened while the watcher was down.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.shared.webhook_health import CAUSES, WebhookHealth


@dataclass
class DeliveryHealth:
    started_at: float
    grace_s: float = 60.0
    window_s: float = 600.0
    failing_since: float | None = None
    last_delivery_at: float | None = None
    last_repair_at: float | None = None
    repaired: int = 0  # while failing
    delivered: int = 0  # while failing
    deliveries_ever: int = 0
    rejected: int = 0  # signature rejections while failing (or ever, before the first delivery)

    def delivery(self, now: float) -> None:
        """A verified delivery of an alias change arrived."""
        self.last_delivery_at = now
        self.deliveries_ever += 1
        if self.failing_since is not None:
            self.delivered += 1

    def rejected_signature(self) -> None:
        self.rejected += 1

    def repair(self, now: float, changes: int) -> None:
        """The poller published `changes` that no delivery had brought."""
        if changes <= 0 or now < self.started_at + self.grace_s:
            return
        if self.failing_since is None:
            self.failing_since, self.repaired, self.delivered = now, 0, 0
        self.repaired += changes
        self.last_repair_at = now

    def report(self, now: float, watcher: str = "") -> WebhookHealth:
        if self.failing_since is not None and self.last_repair_at is not None:
            recovered = (
                now - self.last_repair_at >= self.window_s
                and self.last_delivery_at is not None
                and self.last_delivery_at > self.last_repair_at
            )
            if recovered:
                self.failing_since, self.repaired, self.delivered, self.rejected = None, 0, 0, 0
        if self.failing_since is not None:
            status = "failing"
        elif self.deliveries_ever:
            status = "ok"
        else:
            status = "unknown"
        return WebhookHealth(
            status=status,
            failing_since=self.failing_since,
            last_delivery_at=self.last_delivery_at,
            last_repair_at=self.last_repair_at,
            repaired_changes=self.repaired,
            delivered_changes=self.delivered,
            rejected_signatures=self.rejected,
            causes=self._causes() if status == "failing" else [],
            watcher=watcher,
            updated_at=now,
        )

    def _causes(self) -> list[str]:
        """Most likely first: refused signatures; deliveries that arrive only sometimes (several MLflow
        workers without one encryption key); none at all (not registered, unreachable, not allowed)."""
        causes = [CAUSES["signature_rejected"]] if self.rejected else []
        if self.delivered or self.deliveries_ever:  # deliveries can arrive: not a matter of the URL
            return [*causes, CAUSES["some_dropped"], CAUSES["no_delivery"]]
        return [*causes, CAUSES["no_delivery"], CAUSES["some_dropped"]]
