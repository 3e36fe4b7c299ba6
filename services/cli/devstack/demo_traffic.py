"""The demo's simulated users: threads sending held-out wine samples to every gateway replica (optionally
as new users rating each answer honestly), and the probes that tell when a replica serves a version."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.cli.devstack.background import Background
from services.cli.devstack.sample_models import wine_data
from services.cli.stack_runner import RunningService


@dataclass
class Traffic:
    """Requests sent by the demo client: (sent_at, replica, version or None, correct or None)."""

    rows: list[tuple[float, str, str | None, bool | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, row: tuple[float, str, str | None, bool | None], error: str | None = None) -> None:
        with self.lock:
            self.rows.append(row)
            if error:
                self.errors.append(error)


class TrafficClient(Background):
    """Threads sending held-out samples to every replica in turn until stopped.

    With `users=True` each request comes from a new simulated user (so a canary split applies); with
    `feedback=True` every user rates the answer honestly against the held-out label: thumbs up when
    right, thumbs down with the correct label as `corrected_output` when wrong.
    """

    def __init__(
        self,
        replicas: list[RunningService],
        model: str,
        threads: int = 4,
        *,
        users: bool = False,
        feedback: bool = False,
    ) -> None:
        super().__init__(threads)
        data = wine_data()
        self.samples = [
            ({k: float(v) for k, v in row.items()}, int(label))
            for (_, row), label in zip(data.test_x.iterrows(), data.test_y, strict=True)
        ]
        self.replicas = replicas
        self.model = model
        self.users = users
        self.feedback = feedback
        self.traffic = Traffic()
        self.variants: dict[tuple[str, str], list[bool]] = {}
        self.feedback_sent = 0
        self._threads_n = threads
        self._raters = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rater")
        self._rater_client = httpx.Client(timeout=30.0)

    def _run(self, worker: int) -> None:
        i = worker
        with httpx.Client(timeout=10.0) as client:
            while self.running:
                replica = self.replicas[i % len(self.replicas)]
                record, label = self.samples[i % len(self.samples)]
                user = f"user-{worker}-{i}" if self.users else None
                i += self._threads_n
                sent = time.time()
                try:
                    resp = client.post(
                        f"{replica.url}/v1/models/{self.model}/predict",
                        json={"inputs": record, "user_id": user},
                    )
                except httpx.HTTPError as exc:
                    self.traffic.add((sent, replica.name, None, None), f"{replica.name}: {exc!r}")
                    continue
                if resp.status_code != 200:
                    self.traffic.add((sent, replica.name, None, None), f"{replica.name}: {resp.status_code}")
                    continue
                body = resp.json()
                correct = body["outputs"] == label
                self.traffic.add((sent, replica.name, str(body["version"]), correct))
                with self.traffic.lock:
                    self.variants.setdefault((body["variant"], str(body["version"])), []).append(correct)
                if self.feedback:
                    rating = {
                        "request_id": body["request_id"],
                        "user_id": user,
                        "feedback_token": body.get("feedback_token"),
                    }
                    rating |= (
                        {"rating": "thumbs_up"}
                        if correct
                        else {"rating": "thumbs_down", "corrected_output": label}
                    )
                    self._raters.submit(self._rate, f"{replica.url}/v1/feedback", rating)

    def _rate(self, url: str, rating: dict[str, Any]) -> None:
        """Users rate a moment later, independently of their next request."""
        with contextlib.suppress(httpx.HTTPError):
            if self._rater_client.post(url, json=rating).status_code == 202:
                with self.traffic.lock:
                    self.feedback_sent += 1

    def stop(self) -> None:
        super().stop()
        self._raters.shutdown(wait=True, cancel_futures=True)
        self._rater_client.close()


def _serving_since(replica: RunningService, model: str) -> tuple[str | None, float]:
    try:
        status = httpx.get(f"{replica.url}/v1/models/{model}", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return None, 0.0
    return status.get("aliases", {}).get("champion"), float(status.get("swapped_at", {}).get("champion", 0))


def wait_until_serving(
    replicas: list[RunningService], model: str, version: str, timeout_s: float = 60.0
) -> dict[str, float]:
    """Replica name -> wall time it began serving `version` as champion."""
    deadline = time.time() + timeout_s
    since: dict[str, float] = {}
    while time.time() < deadline and len(since) < len(replicas):
        for replica in replicas:
            served, at = _serving_since(replica, model)
            if served == version:
                since[replica.name] = at
        time.sleep(0.02)
    return since
