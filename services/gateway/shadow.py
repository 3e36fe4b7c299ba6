"""The gateway's part of the shadow step: mirror a sample of champion requests to the challenger.

While a rollout is in its shadow step (the traffic split has weight 0 and a `shadow_share`), a champion
request that `mirrored()` picks is answered by the champion as usual; after the answer is built, the same
parsed inputs go to the challenger in the background. Its answer is never returned: it is compared with
the champion's and reported as an InferenceRecorded with variant `shadow` (latency, error, agreement) for
the canary to judge. Off the request path and bounded: at most `shadow_max_in_flight` mirrored calls run
at once per replica, a request that finds them busy is not mirrored (counted as dropped), and a mirrored
call starts only when no user request is being served here (it waits up to 2 s for such a gap, else it is
dropped), so a slow or failing challenger costs users nothing but a share of this replica's idle CPU.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from events import InferenceRecorded
from services.gateway import metrics
from services.gateway.adapters.inference_events import InferenceEmitter
from services.gateway.adapters.model_loader import LoadedModel
from services.gateway.adapters.traffic_router import TrafficRouter
from services.gateway.batching import Predictions
from services.gateway.domain.inputs import ParsedInputs
from services.gateway.domain.serving_table import ServingTable
from services.gateway.schemas import PredictRequest
from services.shared.traffic import mirrored

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MirroredRequest:
    """A champion request answered, to be replayed on the challenger."""

    model: str
    challenger: LoadedModel
    body: PredictRequest
    parsed: ParsedInputs
    request_id: str
    rollout_id: str | None
    champion_outputs: Any


class ShadowMirror:
    """Mirrored calls wait for a moment when this replica serves no user request (up to `wait_idle_s`,
    else they are dropped): the challenger gets the replica's idle time, not its users' time."""

    def __init__(
        self,
        router: TrafficRouter,
        table: ServingTable,
        emitter: InferenceEmitter,
        predictions: Predictions,
        *,
        replica: str,
        challenger_alias: str,
        max_in_flight: int,
        wait_idle_s: float = 2.0,
    ) -> None:
        self.router, self.table, self.emitter = router, table, emitter
        self.predictions = predictions
        self.replica, self.challenger_alias = replica, challenger_alias
        self.max_in_flight = max_in_flight
        self.wait_idle_s = wait_idle_s
        self.in_flight = 0
        self.serving = 0  # user predictions in progress on this replica (handlers.predict counts them)
        self._tasks: set[asyncio.Task[None]] = set()

    async def _idle(self) -> bool:
        deadline = time.monotonic() + self.wait_idle_s
        while self.serving > 0:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.0005)
        return True

    def challenger_for(self, name: str, rollout_id: str | None, request_id: str) -> LoadedModel | None:
        """The loaded challenger when this champion request is to be mirrored, else None."""
        split = self.router.split(name)
        if split is None or split.shadow_share <= 0 or split.rollout_id != rollout_id:
            return None
        loaded = self.table.get(name, self.challenger_alias)
        if loaded is None or loaded.version != split.challenger_version:
            return None
        return loaded if mirrored(split.rollout_id, request_id, split.shadow_share) else None

    def mirror(self, request: MirroredRequest) -> None:
        """Start the mirrored call in the background (or drop it when the slots are busy)."""
        if self.in_flight >= self.max_in_flight:
            metrics.SHADOW.labels("dropped").inc()
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, request: MirroredRequest) -> None:
        challenger, body, parsed = request.challenger, request.body, request.parsed
        try:
            if not await self._idle():
                metrics.SHADOW.labels("dropped").inc()
                return
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                outputs = await self.predictions.call(challenger, parsed.records, dict(body.params or {}))
                result: Any = outputs[0] if parsed.single and len(outputs) == 1 else outputs
            except Exception as exc:
                error, result = exc, None
            latency_ms = (time.perf_counter() - started) * 1000
            agrees = None if error is not None else _same(result, request.champion_outputs)
            metrics.SHADOW.labels("error" if error else ("agreed" if agrees else "differed")).inc()
            self.emitter.emit(
                InferenceRecorded(
                    producer=f"gateway/{self.replica}",
                    model=request.model,
                    version=challenger.version,
                    alias=self.challenger_alias,
                    variant="shadow",
                    rollout_id=request.rollout_id,
                    request_id=f"{request.request_id}.shadow",
                    replica=self.replica,
                    user_id=body.user_id,
                    status="ok" if error is None else "error",
                    error_type=type(error).__name__ if error else None,
                    latency_ms=latency_ms,
                    shadow_agrees=agrees,
                )
            )
        except Exception:  # a shadow call must never disturb the replica
            log.exception("shadow call of %s version %s failed", request.model, challenger.version)
        finally:
            self.in_flight -= 1


def _same(a: Any, b: Any) -> bool:
    try:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return False
