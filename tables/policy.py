"""The quota policy: from a customer's subscriptions to limit, period and status.

- A subscription item grants its catalog entry's `quota` x quantity; a subscription's
  items add up, and `null` (unlimited) wins. Top-up prices grant nothing recurring.
  A price missing from the catalog grants nothing and is reported (`unknown_prices`),
  so the caller can dead-letter it; the other items still count.
- Per subscription: `active`/`trialing` count as `active`; `past_due` counts as `grace`
  for `QuotaPolicy.grace_seconds` after it was first seen past due, then `blocked`;
  every other status (`unpaid`, `canceled`, `incomplete`, `incomplete_expired`,
  `paused`, anything new) is `blocked` and grants nothing.
- Per customer: the limit is the sum over subscriptions that are `active` or in
  `grace`, plus the top-ups bought in the current period. Status: `active` if any
  subscription is active, else `grace` if any is, else `blocked` (no subscription at
  all: `blocked` with limit 0). An `active` or `grace` customer whose `used` reached
  the limit is `exhausted`. A deleted customer is `blocked`.
- The period is the latest item period (`current_period_start/end`) of the counting
  subscriptions (or of all, when none counts), falling back to the subscription-level
  period of older API versions.

Everything here reads only the state, so usage batches and timers can re-evaluate a
quota without the tenant's catalog; the catalog is resolved when a subscription
snapshot is applied (`entitlement_of`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tables.billing_state import CustomerState, ItemState, SubscriptionState
from tables.quota import QuotaStatus
from tables.tenant import Tenant

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "Entitlement",
    "QuotaPolicy",
    "QuotaView",
    "entitlement_of",
    "grace_deadline",
    "period_of",
    "quota_of",
    "subscription_status",
]

DEFAULT_GRACE_SECONDS = 3 * 24 * 3600.0
_ACTIVE = frozenset({"active", "trialing"})


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """Tunable policy; one per worker (or per tenant, if tenants ever differ)."""

    grace_seconds: float = DEFAULT_GRACE_SECONDS


@dataclass(frozen=True, slots=True)
class Entitlement:
    """What a subscription's items grant, and the prices the catalog does not know."""

    quota: int | None
    rate_per_second: float | None
    features: tuple[str, ...]
    unknown_prices: tuple[str, ...]


def entitlement_of(items: Iterable[ItemState], tenant: Tenant) -> Entitlement:
    """Resolves items through the catalog: lookup_key, then price id, then product id."""
    quota: int | None = 0
    rate: float | None = None
    features: list[str] = []
    unknown: list[str] = []
    for item in items:
        plan = tenant.plan_for(item.lookup_key, item.price, item.product)
        if plan is None:
            unknown.append(item.lookup_key or item.price or item.product or "<no price>")
            continue
        if plan.topup:
            continue
        if plan.quota is None or quota is None:
            quota = None
        else:
            quota += plan.quota * item.quantity
        if plan.rate_per_second is not None:
            rate = (rate or 0.0) + plan.rate_per_second * item.quantity
        features.extend(f for f in plan.features if f not in features)
    return Entitlement(quota, rate, tuple(features), tuple(unknown))


def subscription_status(sub: SubscriptionState, now: float, policy: QuotaPolicy) -> QuotaStatus:
    """`active`, `grace` or `blocked` for one subscription at time `now`."""
    if sub.status in _ACTIVE:
        return "active"
    if sub.status == "past_due":
        since = sub.past_due_since if sub.past_due_since is not None else sub.as_of
        return "grace" if now < since + policy.grace_seconds else "blocked"
    return "blocked"


def grace_deadline(state: CustomerState, policy: QuotaPolicy) -> float | None:
    """When a past-due subscription's grace ends (the quota changes by time alone)."""
    ends = [
        (s.past_due_since if s.past_due_since is not None else s.as_of) + policy.grace_seconds
        for s in state.subscriptions.values()
        if s.status == "past_due"
    ]
    return min(ends, default=None)


def period_of(subs: Iterable[SubscriptionState]) -> tuple[int | None, int | None]:
    """The latest (start, end) among the subscriptions' item or subscription periods."""
    best: tuple[int, int | None] | None = None
    for sub in subs:
        for start, end in _periods(sub):
            if (
                best is None
                or start > best[0]
                or (start == best[0] and (end or 0) > (best[1] or 0))
            ):
                best = (start, end)
    return (None, None) if best is None else best


def _periods(sub: SubscriptionState) -> Iterable[tuple[int, int | None]]:
    found = False
    for item in sub.items:
        if item.period_start is not None:
            found = True
            yield item.period_start, item.period_end
    if not found and sub.period_start is not None:
        yield sub.period_start, sub.period_end


@dataclass(frozen=True, slots=True)
class QuotaView:
    """The quota fields of a `QuotaUpdate`, without version, reason and time."""

    customer_id: str
    limit: int | None
    used: int
    status: QuotaStatus
    period_start: int | None
    period_end: int | None
    features: tuple[str, ...]
    rate_per_second: float | None
    grace_until: float | None = None

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)


def quota_of(state: CustomerState, now: float, policy: QuotaPolicy) -> QuotaView:
    """The customer's quota at time `now` (see the module docstring for the rules)."""
    limit: int | None = 0
    rate: float | None = None
    features: list[str] = []
    any_active = any_grace = False
    if not state.deleted:
        for sub in state.subscriptions.values():
            sub_status = subscription_status(sub, now, policy)
            if sub_status == "blocked":
                continue
            any_active = any_active or sub_status == "active"
            any_grace = any_grace or sub_status == "grace"
            if sub.quota is None or limit is None:
                limit = None
            else:
                limit += sub.quota
            if sub.rate_per_second is not None:
                rate = (rate or 0.0) + sub.rate_per_second
            features.extend(f for f in sub.features if f not in features)
    features.extend(f for f in state.entitlements if f not in features)
    if limit is not None:
        limit += state.topup_units
    status: QuotaStatus = "active" if any_active else "grace" if any_grace else "blocked"
    if status != "blocked" and limit is not None and state.used >= limit:
        status = "exhausted"
    return QuotaView(
        customer_id=state.published_customer_id,
        limit=limit,
        used=state.used,
        status=status,
        period_start=state.period_start,
        period_end=state.period_end,
        features=tuple(sorted(features)),
        rate_per_second=rate,
        grace_until=grace_deadline(state, policy) if status == "grace" else None,
    )
