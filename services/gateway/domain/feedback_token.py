"""Feedback tokens: only whoever received a prediction can rate it (pure).

`POST /v1/feedback` writes into the next training set, so an open endpoint lets anyone poison the model.
The predict response therefore carries a token — an HMAC-SHA256, under a server secret, over the request
id, the user id and an expiry — and feedback must present it: the token proves that this prediction was
served to this user, and no token can be made for a prediction that was not, or for another user, or
after it expired. Tokens are stateless (any replica with the same secret verifies any replica's tokens)
and compact: `v1.<expiry unix s>.<base64url MAC>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

VERSION = "v1"
MAX_TOKEN_LENGTH = 128


class TokenRejected(StrEnum):
    MISSING = "missing"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    INVALID = "invalid"


@dataclass(frozen=True)
class FeedbackTokens:
    secret: bytes
    ttl_s: int

    def issue(self, request_id: str, user_id: str | None, now: float) -> str:
        expiry = int(now) + self.ttl_s
        return f"{VERSION}.{expiry}.{self._mac(request_id, user_id, expiry)}"

    def check(
        self, token: str | None, request_id: str, user_id: str | None, now: float
    ) -> TokenRejected | None:
        """None when `token` was issued for this request and user and has not expired."""
        if not token:
            return TokenRejected.MISSING
        parts = token.split(".") if len(token) <= MAX_TOKEN_LENGTH else []
        if len(parts) != 3 or parts[0] != VERSION or not parts[1].isdigit() or len(parts[1]) > 12:
            return TokenRejected.MALFORMED
        expiry = int(parts[1])
        if not hmac.compare_digest(parts[2].encode(), self._mac(request_id, user_id, expiry).encode()):
            return TokenRejected.INVALID
        if now > expiry:
            return TokenRejected.EXPIRED
        return None

    def _mac(self, request_id: str, user_id: str | None, expiry: int) -> str:
        # The user id is length-prefixed so that no (request, user) pair can be shifted into another.
        user = user_id or ""
        message = f"{VERSION}|{request_id}|{len(user)}:{user}|{expiry}".encode("utf-8", "surrogateescape")
        digest = hmac.new(self.secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
