"""The gateway's parts, built once per process (bootstrap) and handed to routes as `GatewayDep`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from redis.asyncio import Redis

from services.gateway.adapters.fleet_heartbeat import FleetHeartbeat
from services.gateway.adapters.inference_events import InferenceEmitter
from services.gateway.adapters.mlflow_feedback import FeedbackService
from services.gateway.adapters.model_loader import LoadedModel, MlflowModelLoader
from services.gateway.adapters.request_log import RequestLog
from services.gateway.adapters.tracing import PredictionTracer
from services.gateway.adapters.traffic_router import TrafficRouter
from services.gateway.batching import Predictions
from services.gateway.domain.feedback_token import FeedbackTokens
from services.gateway.domain.model_manager import ModelManager
from services.gateway.domain.serving_table import ServingTable
from services.gateway.entrypoints.reload_listener import ReloadListener
from services.gateway.reloader import Reloader
from services.gateway.settings import GatewaySettings
from services.gateway.shadow import ShadowMirror
from services.shared.http_deps import from_app_state
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.redis_store import RedisKeys


@dataclass
class Gateway:
    """Everything a replica needs, built once per process."""

    settings: GatewaySettings
    replica: str
    redis: Redis
    keys: RedisKeys
    loader: MlflowModelLoader
    manager: ModelManager[LoadedModel]
    predictions: Predictions
    table: ServingTable
    reloader: Reloader
    listener: ReloadListener
    tracer: PredictionTracer
    emitter: InferenceEmitter
    publisher: KafkaPublisher | None
    router: TrafficRouter
    request_log: RequestLog
    feedback: FeedbackService
    tokens: FeedbackTokens | None
    started: asyncio.Event
    shadow: ShadowMirror
    heartbeat: FleetHeartbeat


GatewayDep = Annotated[Gateway, Depends(from_app_state("gateway"))]
