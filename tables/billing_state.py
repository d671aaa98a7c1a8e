"""The billing state of one customer: the value of the billing table.

One `CustomerState` per `tenant_id/stripe_customer_id`. It holds everything the quota
is computed from (subscriptions, entitlements, usage and top-ups in the current period)
and, in the same value, everything that makes reprocessing harmless (applied source
offsets, recent event ids, the last fingerprint per Stripe object, usage marks, the last
published quota). Faust writes the value and its guards in one changelog record, so a
crash can never separate them.

`CustomerState` is a pydantic model serialised with `model_dump_json` and read back
with `model_validate_json`; its parts are frozen stdlib dataclasses (pydantic validates
them on the way in, and they cost a fraction of a model to build on the hot path).
The transition functions treat a state as immutable: they build new values with
`model_copy(update=...)`, never mutate one that a caller holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from tables.notification import Notification
from tables.quota import QuotaUpdate

__all__ = [
    "TERMINAL_STATUSES",
    "CustomerState",
    "FeatureGrant",
    "ItemState",
    "NotifyMarks",
    "StoredNotice",
    "SubscriptionState",
    "UsageMark",
]

# Statuses a subscription never leaves: a snapshot showing anything else is older.
TERMINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})


@dataclass(frozen=True, slots=True)
class ItemState:
    """One subscription item as last seen."""

    price: str | None = None
    lookup_key: str | None = None
    product: str | None = None
    quantity: int = 1
    period_start: int | None = None
    period_end: int | None = None


@dataclass(frozen=True, slots=True)
class FeatureGrant:
    """What a subscription grants of one named metered feature (quantities applied)."""

    name: str
    quota: int | None = 0
    rate_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """One subscription as last applied, with the key that orders its snapshots."""

    id: str
    status: str
    items: tuple[ItemState, ...] = ()
    period_start: int | None = None
    period_end: int | None = None
    as_of: float = 0.0
    past_due_since: float | None = None
    # What the items grant, resolved through the tenant's catalog when applied.
    quota: int | None = 0
    rate_per_second: float | None = None
    features: tuple[str, ...] = ()
    metered: tuple[FeatureGrant, ...] = ()

    def order_key(self) -> tuple[bool, int, float]:
        """Snapshots apply in this order: terminal last, then newer period, then newer time."""
        return (self.status in TERMINAL_STATUSES, self.latest_start(), self.as_of)

    def latest_start(self) -> int:
        starts = [i.period_start for i in self.items if i.period_start is not None]
        if self.period_start is not None:
            starts.append(self.period_start)
        return max(starts, default=0)


@dataclass(frozen=True, slots=True)
class UsageMark:
    """Which usage batches of one edge node were applied: all seq <= low, plus `above`."""

    low: int = 0
    above: tuple[int, ...] = ()
    at: float = 0.0  # last batch applied; marks idle for the id window are dropped


@dataclass(frozen=True, slots=True)
class NotifyMarks:
    """What was already told about a customer (tables/notifications.py).

    `fired`: threshold fractions notified in the period starting `period_start`;
    `exhausted`/`blocked`: an exhausted or blocked was told and not yet resolved, so the
    resolution (`quota.restored`, `customer.unblocked`) is told exactly once.
    `feature_fired`/`features_exhausted`: the same per named metered feature (sorted by
    name; bounded by the features the tenant's catalog meters).
    """

    period_start: int | None = None
    fired: tuple[float, ...] = ()
    exhausted: bool = False
    blocked: bool = False
    feature_fired: tuple[tuple[str, tuple[float, ...]], ...] = ()
    features_exhausted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredNotice:
    """A notification kept with the input that caused it (`source`: topic:partition:offset),
    so the input reprocessed after a crash re-sends it (same id) instead of losing it."""

    source: str
    notification: Notification


class CustomerState(BaseModel):
    """Everything quotaflow knows and has applied for one customer."""

    model_config = ConfigDict(extra="ignore")

    tenant_id: str
    stripe_customer_id: str
    alias: str | None = None
    deleted: bool = False
    customer_as_of: float = 0.0
    subscriptions: dict[str, SubscriptionState] = Field(default_factory=dict)
    entitlements: tuple[str, ...] = ()
    entitlements_as_of: float = 0.0
    period_start: int | None = None
    period_end: int | None = None
    used: int = 0
    # Units of each named metered feature used in the current period (reset with `used`).
    feature_used: dict[str, int] = Field(default_factory=dict)
    # Paid top-up invoices: id -> (paid at, units). They count while paid at >= period
    # start, so a top-up delivered before the period it was bought in is not lost.
    topups: dict[str, tuple[int, int]] = Field(default_factory=dict)
    # Idempotency guards (see tables/dedupe.py). `offsets` are stripe.events positions,
    # `usage_offsets` usage.events positions: two topics, two offset spaces per partition.
    offsets: dict[int, int] = Field(default_factory=dict)
    usage_offsets: dict[int, int] = Field(default_factory=dict)
    # quota.ticks positions of the grace ticks that changed the quota (a third offset
    # space): a tick reprocessed after a crash re-publishes the block it made.
    tick_offsets: dict[int, int] = Field(default_factory=dict)
    event_ids: dict[str, float] = Field(default_factory=dict)
    fingerprints: dict[str, tuple[str, float]] = Field(default_factory=dict)
    usage_marks: dict[str, UsageMark] = Field(default_factory=dict)
    usage_ids: dict[str, float] = Field(default_factory=dict)
    # The last quota published for this customer; its version is the per-key counter.
    last: QuotaUpdate | None = None
    # Tenant notifications (issue 17): what was told, and the latest notices with their
    # inputs (bounded), in the same value so one changelog record holds both.
    notify: NotifyMarks = Field(default_factory=NotifyMarks)
    notices: tuple[StoredNotice, ...] = ()

    @property
    def key(self) -> str:
        """The table key: `tenant_id/stripe_customer_id`."""
        return f"{self.tenant_id}/{self.stripe_customer_id}"

    @property
    def topup_units(self) -> int:
        """Units bought with top-ups in the current period."""
        start = self.period_start
        return sum(u for paid, u in self.topups.values() if start is None or paid >= start)

    @property
    def published_customer_id(self) -> str:
        """The customer id the edge and downstream services see: the alias if known."""
        return self.alias or self.stripe_customer_id
