"""Feedback tokens: issued with a prediction, required to rate it (HMAC over request, user, expiry and the
served facts, which any replica reads back from the token)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from services.gateway.domain.feedback_token import FeedbackTokens, ServedFacts, TokenRejected

TOKENS = FeedbackTokens(b"server-secret", ttl_s=3600)
RID = "0123456789abcdef0123456789abcdef"
FACTS = ServedFacts("wine", "3", "challenger", "r-1")


def test_a_token_rates_its_own_prediction_for_its_own_user_until_it_expires() -> None:
    token = TOKENS.issue(RID, "ann", 1_000, FACTS)
    assert TOKENS.check(token, RID, "ann", now=1_000) is None
    assert TOKENS.check(token, RID, "ann", now=4_600) is None  # inclusive
    assert TOKENS.check(token, RID, "ann", now=4_601) is TokenRejected.EXPIRED
    assert TOKENS.check(token, RID, "bob", now=1_000) is TokenRejected.INVALID
    assert TOKENS.check(token, "f" * 32, "ann", now=1_000) is TokenRejected.INVALID
    assert TOKENS.check(token, RID, None, now=1_000) is TokenRejected.INVALID
    anonymous = TOKENS.issue(RID, None, 1_000, FACTS)
    assert TOKENS.check(anonymous, RID, None, now=1_000) is None


def test_another_secret_or_a_forged_expiry_does_not_verify() -> None:
    token = TOKENS.issue(RID, "ann", 1_000, FACTS)
    assert FeedbackTokens(b"other", 3600).check(token, RID, "ann", now=1_000) is TokenRejected.INVALID
    version, expiry, facts, mac = token.split(".")
    extended = f"{version}.{int(expiry) + 10**6}.{facts}.{mac}"
    assert TOKENS.check(extended, RID, "ann", now=1_000) is TokenRejected.INVALID
    promoted = ServedFacts("wine", "4", "champion", None).encode()  # claims another version was rated
    assert (
        TOKENS.check(f"{version}.{expiry}.{promoted}.{mac}", RID, "ann", now=1_000) is TokenRejected.INVALID
    )


def test_missing_and_malformed_tokens_are_named() -> None:
    for token, reason in [
        (None, TokenRejected.MISSING),
        ("", TokenRejected.MISSING),
        ("v1.abc.x", TokenRejected.MALFORMED),
        ("v2.1.x", TokenRejected.MALFORMED),
        ("v3.1.x.y", TokenRejected.MALFORMED),
        ("v2.abc.x.y", TokenRejected.MALFORMED),
        ("v1.1", TokenRejected.MALFORMED),
        ("v1." + "9" * 400 + ".x", TokenRejected.MALFORMED),
    ]:
        assert TOKENS.check(token, RID, "ann", now=0) is reason


@given(user=st.text(max_size=30), other=st.text(max_size=30))
def test_no_user_can_use_another_users_token(user: str, other: str) -> None:
    token = TOKENS.issue(RID, user or None, 0, FACTS)
    expected = None if (user or None) == (other or None) else TokenRejected.INVALID
    assert TOKENS.check(token, RID, other or None, now=0) is expected


def test_the_token_carries_the_served_facts_to_any_replica() -> None:
    token = TOKENS.issue(RID, "ann", 1_000, FACTS)
    another_replica = FeedbackTokens(b"server-secret", ttl_s=60)  # same secret, its own settings
    assert another_replica.verify(token, RID, "ann", now=1_001).facts == FACTS
    odd = ServedFacts("wine ünïcode · 名前", "12", None, None)
    assert TOKENS.verify(TOKENS.issue(RID, None, 0, odd), RID, None, now=0).facts == odd
    long_name = ServedFacts("m" * 200, "99999", "champion", "r-" + "f" * 40)
    assert len(TOKENS.issue(RID, "u" * 200, 0, long_name)) <= 1024  # FeedbackRequest's bound


def test_tokens_of_the_first_form_keep_verifying_for_their_lifetime() -> None:
    expiry = 5_000
    message = f"v1|{RID}|3:ann|{expiry}".encode()
    mac = base64.urlsafe_b64encode(hmac.new(b"server-secret", message, hashlib.sha256).digest()).decode()
    old = f"v1.{expiry}.{mac.rstrip('=')}"
    verified = TOKENS.verify(old, RID, "ann", now=1_000)
    assert verified.rejected is None and verified.facts is None  # served, facts from the request log
    assert TOKENS.check(old, RID, "bob", now=1_000) is TokenRejected.INVALID
    assert TOKENS.check(old, RID, "ann", now=5_001) is TokenRejected.EXPIRED
