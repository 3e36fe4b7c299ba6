"""Webhook delivery health judged from the poller's repairs (services/registry_watcher/domain)."""

from __future__ import annotations

from services.registry_watcher.domain.delivery_health import DeliveryHealth
from services.shared.webhook_health import CAUSES


def test_deliveries_that_arrive_are_ok_and_nothing_is_unknown() -> None:
    health = DeliveryHealth(started_at=0, grace_s=60)
    assert health.report(100).status == "unknown"
    health.delivery(100)
    health.repair(101, 0)  # a poll that found nothing to do
    assert health.report(102).status == "ok" and health.report(102).causes == []


def test_a_repair_after_the_grace_starts_failing_since_then_with_the_causes() -> None:
    health = DeliveryHealth(started_at=0, grace_s=60)
    health.repair(30, 2)  # within the grace (MLflow's webhook cache, a restart's catch-up): not counted
    assert health.report(31).status == "unknown"
    health.repair(70, 1)
    report = health.report(71)
    assert (report.status, report.failing_since, report.repaired_changes) == ("failing", 70, 1)
    assert report.causes[0] == CAUSES["no_delivery"]  # nothing ever arrived
    health.delivery(80)  # some arrive, others not: several MLflow workers without one key
    health.repair(90, 1)
    report = health.report(91)
    assert (report.failing_since, report.repaired_changes, report.delivered_changes) == (70, 2, 1)
    assert report.causes[0] == CAUSES["some_dropped"]


def test_it_recovers_only_after_a_quiet_window_with_a_delivery() -> None:
    health = DeliveryHealth(started_at=0, grace_s=0, window_s=600)
    health.repair(100, 1)
    assert health.report(800).status == "failing"  # no delivery since: still failing
    health.delivery(801)
    assert health.report(802).status == "ok"  # 702 s without a repair, and a delivery after it
    health.repair(900, 1)
    health.delivery(950)
    assert health.report(1000).status == "failing"  # a repair within the window
    assert health.report(1000).failing_since == 900


def test_refused_signatures_come_first_among_the_causes() -> None:
    health = DeliveryHealth(started_at=0, grace_s=0)
    health.rejected_signature()
    health.repair(10, 1)
    report = health.report(11)
    assert report.causes[0] == CAUSES["signature_rejected"] and report.rejected_signatures == 1


def test_deliveries_seen_before_the_first_repair_point_to_dropped_ones() -> None:
    health = DeliveryHealth(started_at=0, grace_s=0)
    health.delivery(5)
    health.repair(10, 1)
    assert health.report(11).causes[0] == CAUSES["some_dropped"]
