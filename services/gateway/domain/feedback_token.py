"""Feedback tokens: only whoever received a prediction can rate it, on any replica, at once (pure).

`POST /v1/feedback` writes into the next training set, so an open endpoint lets anyone poison the model.
The predict response therefore carries a token — an HMAC-SHA256, under a server secret, over the request
id, the user id, an expiry and the served facts a rating needs (`ServedFacts`: model, version, variant,
rollout) — and feedback must present it: the token proves that this prediction was served to this user,
and no token can be made for a prediction that was not, or for another user, or after it expired. Tokens
are stateless: any replica with the same secret verifies any replica's tokens and reads the served facts
from the token itself, so a rating sent the moment the answer arrived, to another replica than the one
that served it, is accepted without waiting for the serving replica's request log (which only enriches the
rating: inputs and outputs, trace). Compact: `v2.<expiry unix s>.<base64url facts>.<base64url MAC>`.
Tokens of the first form, `v1.<expiry>.<MAC>` (no facts), keep verifying for their lifetime.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import StrEnum

VERSION = "v2"
MAX_TOKEN_LENGTH = 1024


class TokenRejected(StrEnum):
    MISSING = "missing"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    INVALID = "invalid"


@dataclass(frozen=True)
class ServedFacts:
    """What a rating must know about the prediction it rates (signed into the token)."""

    model: str
    version: str
    variant: str | None = None
    rollout_id: str | None = None

    def encode(self) -> str:
        raw = json.dumps([self.model, self.version, self.variant, self.rollout_id], separators=(",", ":"))
        return _b64(raw.encode("utf-8", "surrogateescape"))

    @classmethod
    def decode(cls, text: str) -> ServedFacts:
        model, version, variant, rollout_id = json.loads(_unb64(text))
        if not isinstance(model, str) or not isinstance(version, str):
            raise ValueError("model and version must be strings")
        return cls(model, version, variant, rollout_id)


@dataclass(frozen=True)
class Verified:
    """A token's verdict: `rejected` is None when it verified; `facts` are None for a v1 token."""

    rejected: TokenRejected | None
    facts: ServedFacts | None = None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class FeedbackTokens:
    secret: bytes
    ttl_s: int

    def issue(self, request_id: str, user_id: str | None, now: float, facts: ServedFacts) -> str:
        expiry = int(now) + self.ttl_s
        encoded = facts.encode()
        return f"{VERSION}.{expiry}.{encoded}.{self._mac(VERSION, request_id, user_id, expiry, encoded)}"

    def verify(self, token: str | None, request_id: str, user_id: str | None, now: float) -> Verified:
        """Whether `token` was issued for this request and user and has not expired, and the facts it
        carries."""
        if not token:
            return Verified(TokenRejected.MISSING)
        parts = token.split(".") if len(token) <= MAX_TOKEN_LENGTH else []
        if len(parts) == 4 and parts[0] == "v2":
            version, expiry_text, encoded, mac = parts
        elif len(parts) == 3 and parts[0] == "v1":
            version, expiry_text, mac = parts
            encoded = None
        else:
            return Verified(TokenRejected.MALFORMED)
        if not expiry_text.isdigit() or len(expiry_text) > 12:
            return Verified(TokenRejected.MALFORMED)
        expiry = int(expiry_text)
        expected = self._mac(version, request_id, user_id, expiry, encoded)
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            return Verified(TokenRejected.INVALID)
        if now > expiry:
            return Verified(TokenRejected.EXPIRED)
        if encoded is None:
            return Verified(None)
        try:
            return Verified(None, ServedFacts.decode(encoded))
        except (ValueError, TypeError, binascii.Error):  # signed by us, yet unreadable: refuse it
            return Verified(TokenRejected.MALFORMED)

    def check(
        self, token: str | None, request_id: str, user_id: str | None, now: float
    ) -> TokenRejected | None:
        """None when `token` was issued for this request and user and has not expired."""
        return self.verify(token, request_id, user_id, now).rejected

    def _mac(self, version: str, request_id: str, user_id: str | None, expiry: int, facts: str | None) -> str:
        # The user id is length-prefixed so that no (request, user) pair can be shifted into another.
        user = user_id or ""
        message = f"{version}|{request_id}|{len(user)}:{user}|{expiry}"
        if facts is not None:
            message += f"|{facts}"
        digest = hmac.new(self.secret, message.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
        return _b64(digest)
