"""Stripe-Signature verification: pure, strict about what counts, lenient about spacing.

The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=<hex>]`. Only `v1` counts (a
`v0` or unknown scheme is ignored, so nobody can downgrade us); the signed payload is
`b"{t}."` + the raw body bytes, HMAC-SHA256 keyed with the whole `whsec_…` string, as
stripe-python computes it. Unlike stripe-python we never decode the body (a non-UTF-8 body
verifies or fails on its bytes, it never raises `UnicodeDecodeError`), we reject a
second `t=` instead of taking the first, and the timestamp window is two-sided.

Every failure is a `SignatureError` whose `reason` is one of `REASONS`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence

from ingress.exceptions import SignatureError

__all__ = ["REASONS", "sign_header", "verify"]

REASONS = (
    "missing_signature",
    "malformed_signature",
    "no_v1_signature",
    "bad_signature",
    "timestamp_too_old",
    "timestamp_in_future",
)

# Bounds on attacker-controlled work: a real header is ~150 bytes with at most one v1 per
# active secret (two during a roll) plus a v0.
_MAX_HEADER_CHARS = 4096
_MAX_V1 = 8
_MAX_TIMESTAMP_DIGITS = 12
_HEX = frozenset("0123456789abcdefABCDEF")
_DIGEST_HEX_LEN = 64


def _parse(header: str) -> tuple[int, list[bytes]]:
    """The timestamp and the decoded v1 candidates; raises `SignatureError` on bad shape."""
    if len(header) > _MAX_HEADER_CHARS:
        raise SignatureError("malformed_signature", "Stripe-Signature header is too long")
    timestamp: int | None = None
    candidates: list[bytes] = []
    saw_v1 = False
    for item in header.split(","):
        item = item.strip()
        if not item:
            continue  # a trailing or doubled comma carries nothing
        scheme, eq, value = item.partition("=")
        if not eq:
            raise SignatureError("malformed_signature", "header item without '='")
        scheme = scheme.strip()
        value = value.strip()
        if scheme == "t":
            if timestamp is not None:
                raise SignatureError("malformed_signature", "duplicate t= in header")
            # isascii first: str.isdigit() accepts other scripts' digits, which int() reads.
            if not (value.isascii() and value.isdigit()) or len(value) > _MAX_TIMESTAMP_DIGITS:
                raise SignatureError("malformed_signature", "t= is not a unix timestamp")
            timestamp = int(value)
        elif scheme == "v1":
            saw_v1 = True
            if len(candidates) >= _MAX_V1:
                raise SignatureError("malformed_signature", "too many v1 signatures")
            # A v1 that is not 64 hex digits can never match; it is kept out, not fatal,
            # so a good v1 beside a garbled one still passes (as in stripe-python).
            if len(value) == _DIGEST_HEX_LEN and _HEX.issuperset(value):
                candidates.append(bytes.fromhex(value))
    if timestamp is None:
        raise SignatureError("malformed_signature", "no t= in header")
    if not saw_v1:
        raise SignatureError("no_v1_signature", "no signature with scheme v1")
    return timestamp, candidates


def verify(
    header: str | None,
    body: bytes,
    secrets: Sequence[tuple[str, bytes]],
    now: float,
    tolerance: float,
    future_skew: float,
) -> str:
    """The id of the first secret whose v1 signature is in `header`; `SignatureError` if none.

    `secrets` are `(secret id, whsec_… bytes)` pairs, the tenant's active ones. The
    timestamp window is checked before any HMAC so a replay flood costs no hashing.
    """
    if header is None or not header.strip():
        raise SignatureError("missing_signature", "no Stripe-Signature header")
    timestamp, candidates = _parse(header)
    if timestamp < now - tolerance:
        raise SignatureError("timestamp_too_old", "signature timestamp outside tolerance")
    if timestamp > now + future_skew:
        raise SignatureError("timestamp_in_future", "signature timestamp in the future")
    if candidates:
        signed = b"%d." % timestamp + body
        for secret_id, key in secrets:
            expected = hmac.digest(key, signed, "sha256")
            matched = False
            for candidate in candidates:
                # No early exit inside: every candidate is compared in constant time.
                matched |= hmac.compare_digest(expected, candidate)
            if matched:
                return secret_id
    raise SignatureError("bad_signature", "no v1 signature matches a tenant secret")


def sign_header(body: bytes, secret: bytes, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` value as Stripe would send it: for tests, benchmarks and dev."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret, b"%d." % t + body, "sha256").hexdigest()
    return f"t={t},v1={digest}"
