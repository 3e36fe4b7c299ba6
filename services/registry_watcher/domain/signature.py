"""Verification of MLflow's webhook signatures (Standard Webhooks style).

MLflow signs `"{delivery_id}.{timestamp}.{body}"` with HMAC-SHA256 and sends `v1,<base64 digest>` in
`X-MLflow-Signature`. We recompute it over the raw body bytes, compare in constant time, and refuse
timestamps too far from now so a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

from services.shared.errors import Refused

SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300
MAX_TIMESTAMP_DIGITS = 12


class RejectReason(StrEnum):
    MISSING_SIGNATURE = "missing_signature"
    MISSING_TIMESTAMP = "missing_timestamp"
    MISSING_DELIVERY_ID = "missing_delivery_id"
    MALFORMED_TIMESTAMP = "malformed_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    BAD_SIGNATURE = "bad_signature"


class SignatureRejected(Refused):
    """A webhook delivery whose signature headers are missing, stale or wrong (`reason`)."""

    reason: RejectReason


@dataclass(frozen=True)
class SignedDelivery:
    delivery_id: str
    timestamp: int


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The header value MLflow would send for this delivery (used by tests and benchmarks too)."""
    message = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def verify(
    *,
    secret: str,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    delivery_id: str | None,
    now: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> SignedDelivery:
    """Return the verified delivery or raise `SignatureRejected` with the reason."""
    if not signature:
        raise SignatureRejected(RejectReason.MISSING_SIGNATURE, "X-MLflow-Signature header is missing")
    if not timestamp:
        raise SignatureRejected(RejectReason.MISSING_TIMESTAMP, "X-MLflow-Timestamp header is missing")
    if not delivery_id:
        raise SignatureRejected(RejectReason.MISSING_DELIVERY_ID, "X-MLflow-Delivery-Id header is missing")
    # Bounded before any arithmetic: a 400-digit "timestamp" must not overflow the float comparison.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= MAX_TIMESTAMP_DIGITS):
        raise SignatureRejected(
            RejectReason.MALFORMED_TIMESTAMP,
            f"X-MLflow-Timestamp must be unix seconds (at most {MAX_TIMESTAMP_DIGITS} digits)",
        )
    ts = int(timestamp)
    if abs(now - ts) > tolerance_s:
        raise SignatureRejected(
            RejectReason.STALE_TIMESTAMP,
            f"X-MLflow-Timestamp is more than {tolerance_s}s away from the receiver's clock",
        )
    expected = sign(secret, delivery_id, timestamp, body)
    # Several signatures may be sent space-separated (Standard Webhooks key rotation).
    candidates = signature.split()
    if not any(hmac.compare_digest(expected.encode(), c.encode()) for c in candidates if c.isascii()):
        raise SignatureRejected(RejectReason.BAD_SIGNATURE, "X-MLflow-Signature does not match the body")
    return SignedDelivery(delivery_id=delivery_id, timestamp=ts)
