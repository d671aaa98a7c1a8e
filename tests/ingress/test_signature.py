"""The verifier against every case of stripe-python's tests/test_webhook.py, and the ones it misses.

stripe-python's suite (TestWebhook, TestWebhookSignature, TestStripeClientConstructEvent;
the StripeClient class repeats TestWebhook's cases) is mapped case by case below; its
JSON and v2 cases concern what follows verification, so they run against `parse_event`.
"""

from __future__ import annotations

import time

import pytest
import stripe

from ingress.event import parse_event
from ingress.exceptions import IngressError, RequestRejected, SignatureError
from ingress.signature import REASONS, sign_header, verify

# stripe-python's fixtures, verbatim.
DUMMY_WEBHOOK_PAYLOAD = b"""{
  "id": "evt_test_webhook",
  "object": "event",
  "data": { "object": { "id": "rdr_123", "object": "terminal.reader" } }
}"""
DUMMY_V2_WEBHOOK_PAYLOAD = b"""{
  "id": "evt_234",
  "object": "v2.core.event",
  "type": "v1.billing.meter.error_report_triggered",
  "livemode": true,
  "created": "2022-02-15T00:27:45.330Z"
}"""
SECRET = b"whsec_test_secret"
SECRETS = [("s1", SECRET)]
EVENT = b'{"id":"evt_1","object":"event","type":"invoice.paid","livemode":false}'
NOW = 1_750_000_000.0


def header_for(
    payload: bytes = DUMMY_WEBHOOK_PAYLOAD,
    *,
    timestamp: int = int(NOW),
    secret: bytes = SECRET,
    scheme: str = "v1",
    signature: str | None = None,
) -> str:
    """stripe-python's `generate_header`, over bytes."""
    if signature is None:
        signature = sign_header(payload, secret, timestamp).split("v1=", 1)[1]
    return f"t={timestamp},{scheme}={signature}"


def check(
    header: str | None,
    body: bytes = DUMMY_WEBHOOK_PAYLOAD,
    secrets: list[tuple[str, bytes]] = SECRETS,
    *,
    now: float = NOW,
    tolerance: float = 300.0,
    future_skew: float = 60.0,
) -> str:
    return verify(header, body, secrets, now, tolerance, future_skew)


def reason_of(header: str | None, body: bytes = DUMMY_WEBHOOK_PAYLOAD, **kw: object) -> str:
    with pytest.raises(SignatureError) as info:
        check(header, body, **kw)  # type: ignore[arg-type]
    assert info.value.reason in REASONS
    assert info.value.status == 400
    return info.value.reason


# --- stripe-python: TestWebhook / TestStripeClientConstructEvent -------------------------


def test_construct_event_verifies_and_reads_a_valid_event() -> None:
    assert check(header_for(EVENT), EVENT) == "s1"
    assert parse_event(EVENT).id == "evt_1"


def test_raise_on_json_error_after_a_valid_signature() -> None:
    payload = b"this is not valid JSON"
    assert check(header_for(payload), payload) == "s1"
    with pytest.raises(RequestRejected) as info:
        parse_event(payload)
    assert info.value.reason == "invalid_json"


def test_raise_on_invalid_header() -> None:
    assert reason_of("bad_header") == "malformed_signature"


def test_construct_event_from_bytearray() -> None:
    assert check(header_for(EVENT), bytes(bytearray(EVENT))) == "s1"


def test_construct_event_from_bytes() -> None:
    assert check(header_for(DUMMY_WEBHOOK_PAYLOAD)) == "s1"


def test_raise_on_v2_payload() -> None:
    payload = DUMMY_V2_WEBHOOK_PAYLOAD
    assert check(header_for(payload), payload) == "s1"
    with pytest.raises(RequestRejected) as info:
        parse_event(payload)
    assert info.value.reason == "unsupported_event"


# --- stripe-python: TestWebhookSignature --------------------------------------------------


def test_raise_on_malformed_header() -> None:
    assert reason_of("i'm not even a real signature header") == "malformed_signature"


def test_raise_on_no_signatures_with_expected_scheme() -> None:
    assert reason_of(header_for(scheme="v0")) == "no_v1_signature"


def test_raise_on_no_valid_signatures_for_payload() -> None:
    assert reason_of(header_for(signature="bad_signature")) == "bad_signature"


def test_raise_on_timestamp_outside_tolerance() -> None:
    header = header_for(timestamp=int(NOW) - 15)
    assert reason_of(header, tolerance=10.0) == "timestamp_too_old"


def test_valid_header_and_signature() -> None:
    assert check(header_for(), tolerance=10.0) == "s1"


def test_header_contains_valid_signature_beside_a_bad_one() -> None:
    assert check(header_for() + ",v1=bad_signature", tolerance=10.0) == "s1"
    assert check("v1=" + "0" * 64 + "," + header_for(), tolerance=10.0) == "s1"


def test_timestamp_window_is_always_checked_but_configurable() -> None:
    # stripe-python skips the check without a tolerance; ours always has one.
    header = header_for(timestamp=12345)
    assert reason_of(header) == "timestamp_too_old"
    assert check(header, tolerance=NOW) == "s1"


# --- agreement with the stripe library itself ---------------------------------------------


def test_stripe_library_signatures_verify_and_ours_verify_in_stripe() -> None:
    now = int(time.time())
    theirs = stripe.WebhookSignature.generate_signature_header(
        EVENT.decode(), SECRET.decode(), timestamp=now
    )
    assert verify(theirs, EVENT, SECRETS, now, 300, 60) == "s1"
    ours = sign_header(EVENT, SECRET, now)
    assert stripe.WebhookSignature.verify_header(EVENT.decode(), ours, SECRET.decode(), 300)


# --- what stripe-python's suite misses ----------------------------------------------------


def test_missing_header() -> None:
    assert reason_of(None) == "missing_signature"
    assert reason_of("") == "missing_signature"
    assert reason_of("  \t ") == "missing_signature"


def test_whitespace_around_items_keys_and_values_is_tolerated() -> None:
    sig = header_for().split("v1=", 1)[1]
    header = f"  t = {int(NOW)} ,\tv1 =  {sig}  , "
    assert check(header) == "s1"


def test_upper_case_hex_signature_verifies() -> None:
    sig = header_for().split("v1=", 1)[1]
    assert check(f"t={int(NOW)},v1={sig.upper()}") == "s1"


def test_duplicate_timestamp_is_malformed() -> None:
    header = header_for() + f",t={int(NOW) - 1000}"
    assert reason_of(header) == "malformed_signature"
    assert reason_of(f"t={int(NOW)}," + header_for()) == "malformed_signature"


def test_future_timestamp_beyond_skew_is_rejected_within_skew_accepted() -> None:
    assert reason_of(header_for(timestamp=int(NOW) + 61)) == "timestamp_in_future"
    assert check(header_for(timestamp=int(NOW) + 59)) == "s1"


def test_non_utf8_body_verifies_on_its_bytes_then_fails_as_utf8() -> None:
    body = b'{"id":"evt_1","type":"x","livemode":false,"n":"\xff\xfe"}'
    assert check(header_for(body), body) == "s1"
    assert reason_of(header_for(EVENT), body) == "bad_signature"
    with pytest.raises(RequestRejected) as info:
        parse_event(body)
    assert info.value.reason == "invalid_utf8"


def test_any_of_several_secrets_matches_and_names_itself() -> None:
    other = ("old", b"whsec_old")
    assert check(header_for(secret=SECRET), secrets=[other, ("new", SECRET)]) == "new"
    assert check(header_for(secret=b"whsec_old"), secrets=[other, ("new", SECRET)]) == "old"


def test_secret_roll_header_signed_by_both_verifies_with_either() -> None:
    old_sig = header_for(secret=b"whsec_old")
    new_v1 = header_for(secret=b"whsec_new").split(",", 1)[1]
    header = f"{old_sig},{new_v1},v0=" + "ab" * 32
    assert check(header, secrets=[("new", b"whsec_new")]) == "new"
    assert check(header, secrets=[("old", b"whsec_old")]) == "old"
    assert reason_of(header, secrets=[("x", b"whsec_other")]) == "bad_signature"


def test_another_tenants_secret_never_verifies() -> None:
    header = header_for(EVENT, secret=b"whsec_tenant_a")
    assert reason_of(header, EVENT, secrets=[("b", b"whsec_tenant_b")]) == "bad_signature"


def test_v0_signature_alone_is_ignored_even_when_correct() -> None:
    sig = header_for().split("v1=", 1)[1]
    assert reason_of(f"t={int(NOW)},v0={sig}") == "no_v1_signature"
    assert reason_of(f"t={int(NOW)},v2={sig},x=y") == "no_v1_signature"


def test_signature_for_another_timestamp_fails() -> None:
    sig = header_for(timestamp=int(NOW) - 10).split("v1=", 1)[1]
    assert reason_of(f"t={int(NOW)},v1={sig}") == "bad_signature"


@pytest.mark.parametrize(
    "t",
    ["", "-5", "+5", "1.5", "0x10", "١٢٣", "12 34", "9" * 13, "abc"],
)
def test_timestamp_that_is_not_plain_ascii_digits_is_malformed(t: str) -> None:
    assert reason_of(f"t={t},v1=" + "0" * 64) == "malformed_signature"


def test_item_without_equals_is_malformed_and_no_timestamp_is_malformed() -> None:
    assert reason_of(header_for() + ",garbage") == "malformed_signature"
    assert reason_of("v1=" + "0" * 64) == "malformed_signature"


def test_work_per_header_is_bounded() -> None:
    many = header_for() + "".join(f",v1={i:064x}" for i in range(10))
    assert reason_of(many) == "malformed_signature"
    assert reason_of(header_for() + ",x=" + "a" * 5000) == "malformed_signature"


def test_signature_error_is_an_ingress_error_with_fields_and_no_secret() -> None:
    with pytest.raises(IngressError) as info:
        check(header_for(secret=b"whsec_wrong"))
    err = info.value
    assert (err.status, err.reason) == (400, "bad_signature")
    assert "whsec" not in repr(err) + str(err) + err.message
