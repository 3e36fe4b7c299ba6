"""The gateway's shadow step: which requests are mirrored, and that mirrored calls yield to users."""

from __future__ import annotations

import asyncio

from services.gateway.shadow import ShadowMirror
from services.shared.traffic import mirrored


def test_mirrored_is_a_stable_uniform_sample_by_request_id() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    assert not any(mirrored("r-1", i, 0.0) for i in ids)
    assert all(mirrored("r-1", i, 1.0) for i in ids)
    share = sum(mirrored("r-1", i, 0.1) for i in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert [mirrored("r-1", i, 0.1) for i in ids[:200]] == [mirrored("r-1", i, 0.1) for i in ids[:200]]


def test_a_mirrored_call_waits_for_a_moment_without_user_requests_or_gives_up() -> None:
    async def scenario() -> tuple[bool, bool, float]:
        mirror = ShadowMirror(
            None,  # type: ignore[arg-type]  # only the idle wait is exercised here
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            replica="r",
            challenger_alias="challenger",
            max_in_flight=1,
            wait_idle_s=0.05,
        )
        mirror.serving = 1
        gave_up = await mirror._idle()  # users all along: dropped after wait_idle_s
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, lambda: setattr(mirror, "serving", 0))
        started = loop.time()
        got_idle = await mirror._idle()  # the user request ends: the shadow call may start
        return gave_up, got_idle, loop.time() - started

    gave_up, got_idle, waited = asyncio.run(scenario())
    assert gave_up is False and got_idle is True and 0.015 < waited < 0.05
