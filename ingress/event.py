"""What the ingress reads from a verified body: the few fields the envelope needs.

The body is parsed only after its signature verified, and only to check it is a Stripe
v1 snapshot event. It is published as received, never re-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from ingress.exceptions import RequestRejected

__all__ = ["StripeEventFields", "parse_event"]

_MAX_ID_CHARS = 255


@dataclass(frozen=True, slots=True)
class StripeEventFields:
    id: str
    type: str
    livemode: bool
    account: str | None


def _text_field(doc: dict[str, object], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value or len(value) > _MAX_ID_CHARS:
        raise RequestRejected("invalid_event", f"event.{name} must be a non-empty short string")
    return value


def parse_event(body: bytes) -> StripeEventFields:
    """The event's id, type, livemode and account; `RequestRejected` if it is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses invalid UTF-8 too; tell the two apart only on this cold path.
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestRejected("invalid_utf8", "body is not UTF-8") from None
        raise RequestRejected("invalid_json", "body is not JSON") from None
    if not isinstance(doc, dict):
        raise RequestRejected("invalid_event", "body is not a JSON object")
    kind = doc.get("object", "event")
    if kind != "event":
        # e.g. v2 thin notifications ("v2.core.event"): not a snapshot we can apply.
        raise RequestRejected("unsupported_event", "only v1 snapshot events are accepted")
    event_id = _text_field(doc, "id")
    event_type = _text_field(doc, "type")
    livemode = doc.get("livemode")
    if not isinstance(livemode, bool):
        raise RequestRejected("invalid_event", "event.livemode must be a boolean")
    account = doc.get("account")
    if account is not None and (not isinstance(account, str) or len(account) > _MAX_ID_CHARS):
        raise RequestRejected("invalid_event", "event.account must be a string")
    return StripeEventFields(event_id, event_type, livemode, account)
