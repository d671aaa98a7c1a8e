"""Standard Webhooks signatures (https://www.standardwebhooks.com): the three headers
every delivery carries, verifiable with the `standardwebhooks` library.

    webhook-id:        the notification id (stable: receivers deduplicate on it)
    webhook-timestamp: Unix seconds of this attempt (receivers refuse stale ones)
    webhook-signature: "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))

`key` is the base64 part of the endpoint's `whsec_…` secret, decoded. A fresh timestamp
and signature are made for every attempt, so a retry a day later is not refused as stale.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["SECRET_PREFIX", "sign", "webhook_headers"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    return base64.b64decode(raw)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of one delivery attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": "quotaflow-notifier/1",
    }
