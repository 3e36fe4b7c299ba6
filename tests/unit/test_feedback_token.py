"""Feedback tokens: issued with a prediction, required to rate it (HMAC over request, user, expiry)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.gateway.domain.feedback_token import FeedbackTokens, TokenRejected

TOKENS = FeedbackTokens(b"server-secret", ttl_s=3600)
RID = "0123456789abcdef0123456789abcdef"


def test_a_token_rates_its_own_prediction_for_its_own_user_until_it_expires() -> None:
    token = TOKENS.issue(RID, "ann", now=1_000)
    assert TOKENS.check(token, RID, "ann", now=1_000) is None
    assert TOKENS.check(token, RID, "ann", now=4_600) is None  # inclusive
    assert TOKENS.check(token, RID, "ann", now=4_601) is TokenRejected.EXPIRED
    assert TOKENS.check(token, RID, "bob", now=1_000) is TokenRejected.INVALID
    assert TOKENS.check(token, "f" * 32, "ann", now=1_000) is TokenRejected.INVALID
    assert TOKENS.check(token, RID, None, now=1_000) is TokenRejected.INVALID
    anonymous = TOKENS.issue(RID, None, now=1_000)
    assert TOKENS.check(anonymous, RID, None, now=1_000) is None


def test_another_secret_or_a_forged_expiry_does_not_verify() -> None:
    token = TOKENS.issue(RID, "ann", now=1_000)
    assert FeedbackTokens(b"other", 3600).check(token, RID, "ann", now=1_000) is TokenRejected.INVALID
    version, expiry, mac = token.split(".")
    extended = f"{version}.{int(expiry) + 10**6}.{mac}"
    assert TOKENS.check(extended, RID, "ann", now=1_000) is TokenRejected.INVALID


def test_missing_and_malformed_tokens_are_named() -> None:
    for token, reason in [
        (None, TokenRejected.MISSING),
        ("", TokenRejected.MISSING),
        ("v1.abc.x", TokenRejected.MALFORMED),
        ("v2.1.x", TokenRejected.MALFORMED),
        ("v1.1", TokenRejected.MALFORMED),
        ("v1." + "9" * 400 + ".x", TokenRejected.MALFORMED),
    ]:
        assert TOKENS.check(token, RID, "ann", now=0) is reason


@given(user=st.text(max_size=30), other=st.text(max_size=30))
def test_no_user_can_use_another_users_token(user: str, other: str) -> None:
    token = TOKENS.issue(RID, user or None, now=0)
    expected = None if (user or None) == (other or None) else TokenRejected.INVALID
    assert TOKENS.check(token, RID, other or None, now=0) is expected
