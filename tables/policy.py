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
- Named metered features (`PlanEntry.metered`) add up the same way, each on its own:
  a feature's limit is the sum of its grants over the counting subscriptions (`null`
  wins), its `used` is `CustomerState.feature_used[name]`; a feature no counting
  subscription grants is absent (the edge answers `no_entitlement`). Top-ups and the
  top-level status concern the default feature only: a customer whose default quota is
  exhausted keeps the metered features it has units of.
- The period is the latest item period (`current_period_start/end`) of the counting
  subscriptions (or of all, when none counts), falling back to the subscription-level
  period of older API versions.

Everything here reads only the state, so usage batches and timers can re-evaluate a
quota without the tenant's catalog; the catalog is resolved when a subscription
snapshot is applied (`entitlement_of`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tables.billing_state import CustomerState, FeatureGrant, ItemState, SubscriptionState
from tables.quota import FeatureQuota, QuotaStatus
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
    metered: tuple[FeatureGrant, ...] = ()


def _add_quota(total: int | None, more: int | None) -> int | None:
    """Quotas add up; unlimited (None) wins."""
    return None if total is None or more is None else total + more


def _add_rate(total: float | None, more: float | None) -> float | None:
    """Rates of the grants that have one add up; a grant without a rate adds nothing."""
    return total if more is None else (total or 0.0) + more


def _merge(grants: dict[str, FeatureGrant], grant: FeatureGrant) -> None:
    held = grants.get(grant.name)
    if held is None:
        grants[grant.name] = grant
        return
    grants[grant.name] = FeatureGrant(
        grant.name,
        _add_quota(held.quota, grant.quota),
        _add_rate(held.rate_per_second, grant.rate_per_second),
    )


def entitlement_of(items: Iterable[ItemState], tenant: Tenant) -> Entitlement:
    """Resolves items through the catalog: lookup_key, then price id, then product id.

    Per unit of quantity: the default quota and rate, each named metered feature's quota
    and rate, and the boolean features; items add up (unlimited wins), features unite.
    """
    quota: int | None = 0
    rate: float | None = None
    features: list[str] = []
    metered: dict[str, FeatureGrant] = {}
    unknown: list[str] = []
    for item in items:
        plan = tenant.plan_for(item.lookup_key, item.price, item.product)
        if plan is None:
            unknown.append(item.lookup_key or item.price or item.product or "<no price>")
            continue
        if plan.topup:
            continue
        n = item.quantity
        quota = _add_quota(quota, None if plan.quota is None else plan.quota * n)
        if plan.rate_per_second is not None:
            rate = _add_rate(rate, plan.rate_per_second * n)
        features.extend(f for f in plan.features if f not in features)
        for name, grant in plan.metered.items():
            _merge(
                metered,
                FeatureGrant(
                    name,
                    None if grant.quota is None else grant.quota * n,
                    None if grant.rate_per_second is None else grant.rate_per_second * n,
                ),
            )
    return Entitlement(
        quota, rate, tuple(features), tuple(unknown), tuple(metered[k] for k in sorted(metered))
    )


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
    # Named metered features granted by the counting subscriptions, by name.
    metered: Mapping[str, FeatureQuota] = field(default_factory=dict)

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)


def quota_of(state: CustomerState, now: float, policy: QuotaPolicy) -> QuotaView:
    """The customer's quota at time `now` (see the module docstring for the rules)."""
    limit: int | None = 0
    rate: float | None = None
    features: list[str] = []
    grants: dict[str, FeatureGrant] = {}
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
            for grant in sub.metered:
                _merge(grants, grant)
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
        metered={
            name: _feature_quota(grants[name], state.feature_used.get(name, 0))
            for name in sorted(grants)
        },
    )


def _feature_quota(grant: FeatureGrant, used: int) -> FeatureQuota:
    limit = grant.quota
    return FeatureQuota.model_construct(
        limit=limit,
        used=used,
        remaining=None if limit is None else max(limit - used, 0),
        rate_per_second=grant.rate_per_second,
    )
