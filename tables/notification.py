"""The notification: one quota event for a tenant, as carried on `notifications` and
delivered to the tenant's endpoints (Standard Webhooks).

The value of a `notifications` record is exactly the JSON body the notifier delivers:

    {"id": "msg_…", "type": "quota.exhausted", "timestamp": "2026-01-01T00:00:00.000Z",
     "data": {"tenant_id": …, "customer_id": …, "stripe_customer_id": …, "limit": …,
              "used": …, "remaining": …, "status": …, "period_start": …, "period_end": …,
              "version": …, "threshold": null, "feature": null, "grace_until": null}}

`id` is derived from the cause (`notification_id`), never from the moment it was made,
so the same transition seen twice (a reprocessed offset, a replay, a re-drive) makes the
same id: receivers and the notifier deduplicate on it (`webhook-id`). Within major
version 1 the record only gains optional fields.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import orjson
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "NOTIFICATION_SCHEMA",
    "Notification",
    "NotificationData",
    "iso_timestamp",
    "notification_id",
]

# Value of the `qf-schema` header (`wire.SCHEMA_HEADER`) on every notifications record.
NOTIFICATION_SCHEMA = b"notification/1"
TEST_TYPE = "notification.test"


class NotificationData(BaseModel):
    """The customer's quota at the transition, and what about it is being told."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    tenant_id: str
    customer_id: str = Field(
        ..., description="As on quota.updates: the alias if the tenant set one."
    )
    stripe_customer_id: str
    limit: int | None = None
    used: int = 0
    remaining: int | None = None
    status: str | None = None
    period_start: int | None = None
    period_end: int | None = None
    version: int | None = Field(None, description="The quota.updates version it was derived at.")
    threshold: float | None = Field(None, description="quota.threshold_crossed: the fraction.")
    feature: str | None = Field(None, description="Null: the customer's whole quota.")
    grace_until: float | None = None


class Notification(BaseModel):
    """One event for a tenant; `to_json` is the delivered body."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    type: str
    timestamp: str = Field(..., description="ISO 8601 UTC: when the transition was derived.")
    data: NotificationData

    @property
    def tenant_id(self) -> str:
        return self.data.tenant_id

    @property
    def at(self) -> float:
        """`timestamp` as Unix seconds (the delivery lag is measured from it)."""
        return datetime.fromisoformat(self.timestamp).timestamp()

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, data: bytes | str) -> Notification:
        return cls.model_validate(orjson.loads(data))


def iso_timestamp(at: float) -> str:
    """Unix seconds → `2026-01-01T00:00:00.123Z`: millisecond precision, always UTC."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def notification_id(
    tenant_id: str,
    stripe_customer_id: str,
    event_type: str,
    period_start: int | None,
    *,
    threshold: float | None = None,
    version: int | None = None,
    feature: str | None = None,
) -> str:
    """The id of a notification, from its cause alone.

    A threshold fires once per period, so its cause is (customer, period, fraction); a
    status change is caused by the quota version that carried it. A named metered
    feature's notification adds the feature (the whole quota's ids are unchanged by it).
    Nothing time-dependent goes in: a transition re-derived after a crash gets the same id.
    """
    parts: tuple[str, ...] = (
        tenant_id,
        stripe_customer_id,
        event_type,
        "" if period_start is None else str(period_start),
        "" if threshold is None else repr(float(threshold)),
        "" if version is None else str(version),
    )
    if feature is not None:
        parts += (f"feature={feature}",)
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()
    return f"msg_{digest}"
