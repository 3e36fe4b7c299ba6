"""The serving floor of `flywheel bench gateway`: the least a Python HTTP server can do for one prediction.

A minimal FastAPI + uvicorn app (the same stack as the gateway, one worker) serving the registered sklearn
model's estimator itself: JSON body -> numpy row in signature order -> `predict` -> JSON. Nothing else: no
signature check, no routing, no events, no traces. Two modes:

- `direct`: each request predicts at once, on the event loop;
- `batched`: requests go through a fixed-window micro-batcher (the first request of a batch waits up to
  `--wait-ms`, 2 ms, or until `--max-rows` rows are there; then one `predict` for all) — what a plain
  micro-batcher gives at high concurrency, and what its fixed wait costs a lone request.

Run: `python -m benchmarks.floor_server --model-dir DIR --port P --mode direct|batched`.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import uvicorn
from fastapi import FastAPI
from mlflow.models import Model


class FixedWindowBatcher:
    """Rows wait up to `wait_s` (or until `max_rows` are there), then one `predict` answers them all."""

    def __init__(self, predict: Any, wait_s: float, max_rows: int) -> None:
        self._predict = predict
        self._wait_s = wait_s
        self._max_rows = max_rows
        self._rows: list[list[float]] = []
        self._futures: list[asyncio.Future[Any]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def predict(self, row: list[float]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._rows.append(row)
        self._futures.append(future)
        if len(self._rows) >= self._max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows, futures = self._rows, self._futures
        self._rows, self._futures = [], []
        if not rows:
            return
        outputs = self._predict(np.array(rows, dtype=np.float64)).tolist()
        for future, output in zip(futures, outputs, strict=True):
            if not future.done():
                future.set_result(output)


def build_app(model_dir: Path, mode: str, wait_ms: float, max_rows: int) -> FastAPI:
    estimator = mlflow.sklearn.load_model(str(model_dir))
    signature = Model.load(str(model_dir)).signature
    assert signature is not None, "the model needs an input signature"
    names = [spec.name for spec in signature.inputs.inputs]
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False})

    if mode == "direct":

        @app.post("/predict")
        async def predict_direct(body: dict[str, Any]) -> dict[str, Any]:
            row = np.array([[body["inputs"][name] for name in names]], dtype=np.float64)
            return {"outputs": estimator.predict(row).tolist()[0]}

    else:
        batcher = FixedWindowBatcher(estimator.predict, wait_ms / 1000, max_rows)

        @app.post("/predict")
        async def predict_batched(body: dict[str, Any]) -> dict[str, Any]:
            return {"outputs": await batcher.predict([body["inputs"][name] for name in names])}

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("direct", "batched"), default="direct")
    parser.add_argument("--wait-ms", type=float, default=2.0)
    parser.add_argument("--max-rows", type=int, default=64)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    app = build_app(args.model_dir, args.mode, args.wait_ms, args.max_rows)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
