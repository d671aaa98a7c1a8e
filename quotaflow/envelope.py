"""The record format of `stripe.events`: the verified body, byte-exact, plus headers.

The value of each record is exactly the bytes Stripe signed, so an auditor can re-verify
and a replay re-feeds the very same event. What quotaflow learned at the door travels in
Kafka record headers. Ingress writes them, the workers and ops tools read them; this
module is where both sides agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wire import SCHEMA_HEADER

TENANT = "qf-tenant"
EVENT_ID = "qf-event-id"
EVENT_TYPE = "qf-event-type"
LIVEMODE = "qf-livemode"
RECEIVED_AT = "qf-received-at"
SECRET_ID = "qf-secret-id"  # noqa: S105 - a header name; it carries the id, not the secret
SCHEMA = SCHEMA_HEADER  # defined once in `wire`: every topic's records carry it
STRIPE_EVENT_SCHEMA = b"stripe-event/1"


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the ingress learned about a verified Stripe event."""

    tenant_id: str
    event_id: str
    event_type: str
    livemode: bool
    received_at: float
    secret_id: str

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (TENANT, self.tenant_id.encode()),
            (EVENT_ID, self.event_id.encode()),
            (EVENT_TYPE, self.event_type.encode()),
            (LIVEMODE, b"true" if self.livemode else b"false"),
            (RECEIVED_AT, repr(self.received_at).encode()),
            (SECRET_ID, self.secret_id.encode()),
            (SCHEMA, STRIPE_EVENT_SCHEMA),
        ]

    @classmethod
    def from_headers(cls, headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> Envelope:
        """Raises KeyError or ValueError when a header is missing or malformed."""
        h = dict(headers.items() if isinstance(headers, Mapping) else headers)
        return cls(
            tenant_id=h[TENANT].decode(),
            event_id=h[EVENT_ID].decode(),
            event_type=h[EVENT_TYPE].decode(),
            livemode=h[LIVEMODE] == b"true",
            received_at=float(h[RECEIVED_AT]),
            secret_id=h[SECRET_ID].decode(),
        )
