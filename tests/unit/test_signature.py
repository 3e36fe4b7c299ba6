from __future__ import annotations

import pytest

from services.registry_watcher.domain.signature import RejectReason, SignatureRejected, sign, verify

SECRET = "s3cret"
BODY = b'{"entity":"model_version_alias"}'


def check(**overrides: object) -> object:
    args: dict[str, object] = dict(
        secret=SECRET,
        body=BODY,
        signature=sign(SECRET, "d1", "1000", BODY),
        timestamp="1000",
        delivery_id="d1",
        now=1000.0,
        tolerance_s=300,
    )
    args.update(overrides)
    return verify(**args)  # type: ignore[arg-type]


def reason(**overrides: object) -> RejectReason:
    with pytest.raises(SignatureRejected) as info:
        check(**overrides)
    return info.value.reason


def test_valid_signature_is_accepted() -> None:
    delivery = check()
    assert delivery.delivery_id == "d1"  # type: ignore[attr-defined]


def test_signature_matches_mlflow_implementation() -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    assert sign(SECRET, "d1", "1000", BODY) == _generate_hmac_signature(SECRET, "d1", "1000", BODY.decode())


def test_rejections_name_their_reason() -> None:
    assert reason(signature=None) is RejectReason.MISSING_SIGNATURE
    assert reason(timestamp="") is RejectReason.MISSING_TIMESTAMP
    assert reason(delivery_id=None) is RejectReason.MISSING_DELIVERY_ID
    assert reason(timestamp="abc") is RejectReason.MALFORMED_TIMESTAMP
    assert reason(now=1301.0) is RejectReason.STALE_TIMESTAMP
    assert reason(now=699.0) is RejectReason.STALE_TIMESTAMP
    assert reason(body=BODY + b" ") is RejectReason.BAD_SIGNATURE
    assert reason(secret="other") is RejectReason.BAD_SIGNATURE
    assert reason(delivery_id="d2") is RejectReason.BAD_SIGNATURE
    assert reason(signature="v1,AAAA") is RejectReason.BAD_SIGNATURE
    assert reason(signature="v1,ümlaut") is RejectReason.BAD_SIGNATURE


def test_timestamp_is_part_of_the_signed_content() -> None:
    # A replay with a fresh timestamp but the old signature fails.
    assert reason(timestamp="1100", now=1100.0) is RejectReason.BAD_SIGNATURE


def test_edge_of_tolerance_is_accepted_and_rotation_lists_work() -> None:
    check(now=1300.0)
    check(signature="v1,bogus " + sign(SECRET, "d1", "1000", BODY))
