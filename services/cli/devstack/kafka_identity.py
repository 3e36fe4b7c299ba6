"""Who a KRaft cluster is: the id every node is formatted with, and the brokers and controller a node
reports (one Metadata request). Used by the embedded launcher (`kafka.py`) to start and to check a cluster.
"""

from __future__ import annotations

import base64
import uuid


def new_cluster_id() -> str:
    """A KRaft cluster id: Kafka's `Uuid.randomUuid()` format (22 url-safe base64 chars, no leading '-')."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def describe_cluster(bootstrap: str) -> tuple[set[int], int | None]:
    """(broker node ids, controller id) from one Metadata request."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        request_timeout_ms=3000,
        client_id="flywheel-kafka-probe",
    )
    try:
        info = admin.describe_cluster()
    finally:
        admin.close()
    brokers = {int(b["broker_id"]) for b in info.get("brokers", [])}
    controller = info.get("controller_id")
    return brokers, None if controller is None else int(controller)
