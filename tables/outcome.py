"""What applying one input to a customer's state means: store, publish, dead-letter.

Shared by every transition (Stripe events, usage batches, policy ticks): the input's
Kafka position (`Source`), the `Outcome`, and the one place that decides whether the
quota changed and which `version` the next `QuotaUpdate` carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tables.billing_state import CustomerState
from tables.policy import QuotaPolicy, QuotaView, quota_of
from tables.quota import QuotaUpdate, Reason

__all__ = [
    "DeadLetter",
    "Outcome",
    "Source",
    "new_state",
    "publish_if_changed",
    "reevaluate",
    "retirement",
]


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input came from in Kafka."""

    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something the worker must send to `deadletter` (with the original bytes)."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one input means: store, publish, dead-letter."""

    state: CustomerState | None
    update: QuotaUpdate | None
    duplicate: bool
    deadletters: tuple[DeadLetter, ...] = ()
    # When `update` moves the customer to another quota key (its alias changed): what the
    # old key says from now on (`retirement`), published before `update`.
    retired: QuotaUpdate | None = None
    # Usage only: the batch opened a new spool incarnation of a node that had another.
    spool_reset: bool = False

    @property
    def retired_key(self) -> str | None:
        return None if self.retired is None else self.retired.key

    def published(self) -> tuple[QuotaUpdate, ...]:
        """The records to send to `quota.updates`, in order."""
        return tuple(u for u in (self.retired, self.update) if u is not None)


def new_state(tenant_id: str, stripe_customer_id: str) -> CustomerState:
    """An empty state for a customer seen for the first time."""
    return CustomerState(tenant_id=tenant_id, stripe_customer_id=stripe_customer_id)


def publish_if_changed(
    state: CustomerState, now: float, policy: QuotaPolicy, reason: Reason
) -> QuotaUpdate | None:
    """The next quota update if the quota at `now` differs from the last published one.

    `version` is the last one's plus one; nothing is published when nothing changed.
    """
    view = quota_of(state, now, policy)
    last = state.last
    if last is not None and same_quota(view, last):
        return None
    return QuotaUpdate.model_construct(
        tenant_id=state.tenant_id,
        customer_id=view.customer_id,
        limit=view.limit,
        used=view.used,
        remaining=view.remaining,
        status=view.status,
        period_start=view.period_start,
        period_end=view.period_end,
        version=1 if last is None else last.version + 1,
        reason=reason,
        updated_at=float(now),
        features=view.features,
        rate_per_second=view.rate_per_second,
        grace_until=view.grace_until,
        metered=dict(view.metered),
    )


def retirement(state: CustomerState, update: QuotaUpdate | None) -> QuotaUpdate | None:
    """What the key `state` was published under says once `update` moves it to another.

    Blocked with no units: a record rather than a tombstone, because every subscriber and
    edge node already applies records by version, so the old id stops being served with no
    delete path anywhere. Its version is the new update's, which is greater than any the
    old key had (versions count per customer), so it wins wherever it arrives.
    """
    last = state.last
    if update is None or last is None or last.customer_id == update.customer_id:
        return None
    return last.model_copy(
        update={
            "limit": 0,
            "remaining": 0,
            "status": "blocked",
            "version": update.version,
            "reason": Reason(kind="policy", id="alias_retired"),
            "updated_at": update.updated_at,
            "features": (),
            "rate_per_second": None,
            "grace_until": None,
            "metered": {},
        }
    )


def same_quota(view: QuotaView, last: QuotaUpdate, *, except_used: bool = False) -> bool:
    """Whether `view` publishes as `last` did (`except_used`: ignoring every `used`)."""
    return (
        view.limit == last.limit
        and (except_used or view.used == last.used)
        and view.status == last.status
        and view.period_start == last.period_start
        and view.period_end == last.period_end
        and view.customer_id == last.customer_id
        and view.features == last.features
        and view.rate_per_second == last.rate_per_second
        and view.grace_until == last.grace_until
        and _same_metered(view, last, except_used)
    )


def _same_metered(view: QuotaView, last: QuotaUpdate, except_used: bool) -> bool:
    if not except_used:
        return dict(view.metered) == last.metered
    if view.metered.keys() != last.metered.keys():
        return False
    return all(
        (q.limit, q.rate_per_second)
        == (last.metered[name].limit, last.metered[name].rate_per_second)
        for name, q in view.metered.items()
    )


def reevaluate(
    state: CustomerState,
    *,
    now: float,
    policy: QuotaPolicy,
    source: Source | None = None,
    reason_id: str = "grace",
) -> Outcome:
    """Re-evaluates time-dependent policy (a grace period ending) at `now`.

    `policy.grace_deadline(state)` says when. RocksDB tables cannot be written from a
    Faust timer, so the worker should carry the tick through its source topic and pass
    its `source`: then a reprocessed tick is a duplicate like any other input.
    """
    if source is not None and source.offset <= state.offsets.get(source.partition, -1):
        return Outcome(None, state.last, True)
    update = publish_if_changed(state, now, policy, Reason(kind="policy", id=reason_id))
    changes: dict[str, Any] = {}
    if source is not None:
        changes["offsets"] = {**state.offsets, source.partition: source.offset}
    if update is not None:
        changes["last"] = update
    if not changes:
        return Outcome(None, None, False)
    return Outcome(state.model_copy(update=changes), update, False, (), retirement(state, update))
