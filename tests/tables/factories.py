"""Factories of tenants, Stripe objects and events, and a feed of one customer's state.

The Stripe objects and events (current basil+ and localstripe shapes) are built by
`quotaflow.testing.stripe_objects`, which the benches use too; they are re-exported here
under the names the tests use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from quotaflow.testing.stripe_objects import (
    BASE_TIME,
    BASIC,
    DAY,
    JSON,
    LEGACY,
    PRO,
    TOPUP,
    UNKNOWN,
    UNLIMITED,
    Price,
    Shape,
    checkout_session,
    customer,
    deleted_customer,
    entitlement_summary,
    event,
    invoice,
    next_id,
    subscription,
)
from tables.billing import CustomerState, Outcome, QuotaPolicy, Source, apply_event, apply_usage
from tables.quota import QuotaUpdate
from tables.tenant import PlanEntry, Tenant, WebhookSecret

__all__ = [
    "BASE_TIME",
    "BASIC",
    "DAY",
    "JSON",
    "LEGACY",
    "PRO",
    "TOPUP",
    "UNKNOWN",
    "UNLIMITED",
    "Feed",
    "Price",
    "Shape",
    "checkout_session",
    "customer",
    "deleted_customer",
    "entitlement_summary",
    "event",
    "invoice",
    "make_tenant",
    "next_id",
    "subscription",
]


def make_tenant(
    plans: Mapping[str, PlanEntry] | None = None,
    *,
    alias_key: str | None = "rating_id",
    tenant_id: str = "acme",
    stripe_api_key: str | None = None,
    stripe_account: str | None = None,
) -> Tenant:
    default = {
        "basic": PlanEntry(quota=1000, rate_per_second=10, features=("api",)),
        "pro": PlanEntry(quota=10_000, features=("api", "bulk")),
        "price_unlimited": PlanEntry(quota=None),
        "prod_topup": PlanEntry(quota=500, topup=True),
        "plan_legacy": PlanEntry(quota=200),
    }
    return Tenant(
        id=tenant_id,
        webhook_secrets=(WebhookSecret(id="s1", secret=SecretStr("whsec_test")),),
        regions=("eu",),
        plans=dict(plans if plans is not None else default),
        customer_alias_key=alias_key,
        stripe_api_key=None if stripe_api_key is None else SecretStr(stripe_api_key),
        stripe_account=stripe_account,
    )


class Feed:
    """Feeds inputs to one customer's state the way the worker does: new offsets, store."""

    def __init__(
        self,
        tenant: Tenant | None = None,
        *,
        policy: QuotaPolicy | None = None,
        partition: int = 0,
    ) -> None:
        self.tenant = tenant or make_tenant()
        self.policy = policy or QuotaPolicy()
        self.partition = partition
        self.state: CustomerState | None = None
        self.offset = -1
        self.updates: list[QuotaUpdate] = []
        self.outcomes: list[Outcome] = []

    def next_source(self) -> Source:
        self.offset += 1
        return Source(self.partition, self.offset)

    def apply(
        self,
        ev: Mapping[str, Any],
        *,
        fetched: Mapping[str, Any] | None = None,
        now: float | None = None,
        source: Source | None = None,
        fetched_at: float | None = None,
        received_at: float | None = None,
        redrive: bool = False,
    ) -> Outcome:
        created = ev.get("created")
        out = apply_event(
            self.state,
            ev,
            tenant=self.tenant,
            fetched=fetched,
            source=source or self.next_source(),
            now=now if now is not None else float(created if isinstance(created, int) else 0) + 1,
            policy=self.policy,
            fetched_at=fetched_at,
            received_at=received_at,
            redrive=redrive,
        )
        self._record(out)
        return out

    def usage(
        self,
        batch_id: str,
        units: int,
        *,
        now: float,
        source: Source | None = None,
        key_id: str | None = None,
    ) -> Outcome:
        customer_id = self.state.stripe_customer_id if self.state else "cus_usage"
        out = apply_usage(
            self.state,
            tenant_id=self.tenant.id,
            customer_id=customer_id,
            batch_id=batch_id,
            units=units,
            source=source or self.next_source(),
            now=now,
            policy=self.policy,
            key_id=key_id,
        )
        self._record(out)
        return out

    def _record(self, out: Outcome) -> None:
        self.outcomes.append(out)
        if out.state is not None:
            self.state = out.state
        if out.update is not None and not out.duplicate:
            self.updates.append(out.update)

    def quota(self) -> QuotaUpdate:
        """The last published quota (a method: each call reads the current state)."""
        assert self.state is not None
        assert self.state.last is not None
        return self.state.last
