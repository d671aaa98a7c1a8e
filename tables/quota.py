"""The quota: what a customer may use now, and the record that carries it to the edge.

`QuotaUpdate` is the value of every `quota.updates` record, a public contract
(`quotaflow/schemas/quota_update.v1.json`). Within major version 1 it only ever gains
optional fields. `version` is monotonic per key: an edge applies an update only if it is
newer than what it holds, which makes pushes idempotent and order-safe.
"""

from __future__ import annotations

from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1"
# Value of the `qf-schema` header (`wire.SCHEMA_HEADER`) on every quota.updates record;
# consumers check the major version. (tables imports no wire: the header name is not here.)
QUOTA_UPDATE_SCHEMA = b"quota-update/1"
QuotaStatus = Literal["active", "grace", "exhausted", "blocked"]


class Reason(BaseModel):
    """What changed a quota: a Stripe event or a usage batch."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["stripe_event", "usage", "policy", "snapshot"]
    id: str
    type: str | None = None


class QuotaUpdate(BaseModel):
    """One customer's quota as published on `quota.updates` and pushed to the edge."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    tenant_id: str
    customer_id: str
    limit: int | None = Field(..., description="Units per period; null means unlimited.")
    used: int = Field(..., ge=0)
    remaining: int | None = Field(..., description="limit - used, floored at 0; null if unlimited.")
    status: QuotaStatus
    period_start: int | None = Field(None, description="Unix seconds.")
    period_end: int | None = Field(None, description="Unix seconds.")
    version: int = Field(..., ge=1)
    reason: Reason
    updated_at: float = Field(..., description="Unix seconds when the core computed it.")
    features: tuple[str, ...] = ()
    rate_per_second: float | None = None
    grace_until: float | None = Field(
        None,
        description="With status grace: when the grace ends (Unix seconds). Past it, treat "
        "the customer as blocked even before the next record says so.",
    )

    @property
    def key(self) -> str:
        return quota_key(self.tenant_id, self.customer_id)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, data: bytes | str) -> QuotaUpdate:
        return cls.model_validate(orjson.loads(data))


def quota_key(tenant_id: str, customer_id: str) -> str:
    """The key of a customer everywhere: `tenant_id/customer_id`."""
    return f"{tenant_id}/{customer_id}"


def remaining_of(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(limit - used, 0)
