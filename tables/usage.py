"""Usage batches from the edge → `used` in the customer's quota, once per batch id.

Lives beside the billing transitions because it guards and updates the same state value
(`CustomerState`), so a usage batch and a Stripe event can never overwrite each other's
effects when both are applied in one partition.

Publishing is coalesced: a usage batch changes `used` every second for a hot customer,
but the edge only needs to hear about it when it matters for enforcement. With
`thresholds` (fractions of the limit, e.g. 0.5, 0.8, 0.9, 0.95, 0.99, 1.0) a batch
publishes only when the status changes (`exhausted`), when anything but `used` changed,
or when `used` crossed a threshold; so a customer gets at most `len(thresholds)` + a few
usage-driven updates per period, however hot. Without `thresholds` every change publishes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tables.billing_state import CustomerState, UsageMark
from tables.dedupe import (
    INCARNATION_HEX,
    mark_add,
    mark_applied,
    mark_key,
    marks_to_drop,
    parse_batch_id,
    remember,
    spool_reset,
)
from tables.outcome import (
    DeadLetter,
    Outcome,
    Source,
    new_state,
    publish_if_changed,
    retirement,
    same_quota,
)
from tables.policy import QuotaPolicy, quota_of
from tables.quota import QuotaUpdate, Reason
from tables.tenant import FEATURE_PATTERN, Tenant

__all__ = [
    "BATCH_ID_PATTERN",
    "DEFAULT_THRESHOLDS",
    "MAX_FEATURES",
    "MAX_IDLE_CHECK",
    "MAX_UNITS",
    "USAGE_SCHEMA",
    "UsageItem",
    "UsageRecord",
    "apply_usage",
    "meters_of",
    "threshold_of",
]

# Past this many edge nodes in a customer's usage marks, idle ones are dropped.
MAX_IDLE_CHECK = 16
DEFAULT_THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99, 1.0)
# Distinct named metered features one customer's state counts per period.
MAX_FEATURES = 256
# Sanity bound on one customer's units in one batch (a second of one node's traffic).
MAX_UNITS = 1_000_000_000
NODE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
# `<node>:<incarnation>:<seq>`, or the legacy `<node>:<seq>` of edges spooled before
# incarnations (tables/dedupe.py).
BATCH_ID_PATTERN = rf"^[A-Za-z0-9._-]{{1,64}}(:[0-9a-f]{{{INCARNATION_HEX}}})?:[0-9]{{1,18}}$"


def apply_usage(
    state: CustomerState | None,
    *,
    tenant_id: str,
    customer_id: str,
    batch_id: str,
    units: int,
    source: Source,
    now: float,
    policy: QuotaPolicy,
    thresholds: Sequence[float] | None = None,
    key_id: str | None = None,
    features: Mapping[str, int] | None = None,
) -> Outcome:
    """Adds a usage batch to the current period, exactly once per batch id.

    Batch ids `node:incarnation:seq` are tracked per (`key_id`, node, incarnation) — the
    edge key that signed the report, as the ingress recorded it — with a low-water mark
    plus the applied sequence numbers above it; legacy `node:seq` ids per node
    (tables/dedupe.py); other ids in a bounded window. `Outcome.spool_reset` says the
    batch opened a new incarnation of a node that had another in this customer's marks.
    `customer_id` is the Stripe customer id (the table key); the usage agent maps a
    Rating API alias to it. A usage.events offset at or below the recorded one
    (`usage_offsets`, a separate offset space from stripe.events) is a reprocessed
    record: nothing changes and the current quota is handed back for re-emission.

    `units` are the default feature's; `features` the named metered features' units of the
    same batch (name -> units), applied under the same batch-id guard, so every item of a
    customer in one batch must come in one call. A customer's state counts at most
    `MAX_FEATURES` names per period: past it a new name is not counted (`Outcome.
    deadletters` says so). The edge only reports names its records carry, which come from
    the tenant's catalog, so only a sender outside it reaches that bound.
    """
    if state is None:
        state = new_state(tenant_id, customer_id)
    if source.offset <= state.usage_offsets.get(source.partition, -1):
        return Outcome(None, state.last, True)
    changes: dict[str, Any] = {
        "usage_offsets": {**state.usage_offsets, source.partition: source.offset}
    }
    parsed = parse_batch_id(batch_id)
    reset = False
    if parsed is not None:
        seq = parsed.seq
        key = mark_key(parsed, key_id)
        mark = state.usage_marks.get(key)
        if mark is None:
            reset = spool_reset(state.usage_marks, key)
            mark = UsageMark()
        elif mark_applied(mark.low, mark.above, seq):
            return Outcome(None, None, True)
        opened = key not in state.usage_marks
        low, above = mark_add(mark.low, mark.above, seq)
        marks = {**state.usage_marks, key: UsageMark(low=low, above=above, at=now)}
        if opened:
            # Marks of retired nodes and replaced spools would otherwise pile up; the
            # bounds can only be crossed when a mark is opened.
            ats = {k: m.at for k, m in marks.items()}
            drop = marks_to_drop(ats, key, now, MAX_IDLE_CHECK)
            marks = {k: m for k, m in marks.items() if k not in drop}
        changes["usage_marks"] = marks
    else:
        if batch_id in state.usage_ids:
            return Outcome(None, None, True)
        changes["usage_ids"] = remember(state.usage_ids, batch_id, now)
    changes["used"] = state.used + max(units, 0)
    overflow: list[DeadLetter] = []
    if features:
        used = dict(state.feature_used)
        for name, more in features.items():
            if name not in used and len(used) >= MAX_FEATURES:
                overflow.append(
                    DeadLetter("too_many_features", f"{customer_id}: {name} not counted")
                )
                continue
            used[name] = used.get(name, 0) + max(more, 0)
        changes["feature_used"] = used
    new = state.model_copy(update=changes)
    reason = Reason(kind="usage", id=batch_id)
    if thresholds is None or new.last is None:
        update = publish_if_changed(new, now, policy, reason)
    else:
        update = _coalesced(new, new.last, now, policy, reason, thresholds)
    if update is not None:
        new.last = update
    return Outcome(
        new, update, False, tuple(overflow), retirement(state, update), spool_reset=reset
    )


def _coalesced(
    state: CustomerState,
    last: QuotaUpdate,
    now: float,
    policy: QuotaPolicy,
    reason: Reason,
    thresholds: Sequence[float],
) -> QuotaUpdate | None:
    view = quota_of(state, now, policy)
    if (
        same_quota(view, last, except_used=True)
        and threshold_of(view.used, view.limit, thresholds)
        == threshold_of(last.used, last.limit, thresholds)
        and all(
            threshold_of(q.used, q.limit, thresholds)
            == threshold_of(last.metered[name].used, last.metered[name].limit, thresholds)
            for name, q in view.metered.items()
        )
    ):
        return None
    return publish_if_changed(state, now, policy, reason)


def threshold_of(used: int, limit: int | None, thresholds: Sequence[float]) -> int:
    """How many thresholds (fractions of `limit`) `used` has reached; 0 when unlimited."""
    if limit is None:
        return 0
    if limit <= 0:
        return len(thresholds)
    return sum(1 for t in thresholds if used >= t * limit)


def meters_of(state: CustomerState, tenant: Tenant, feature: str | None = None) -> tuple[str, ...]:
    """The Stripe meter event names usage of this customer (of `feature`) is billed on.

    Every subscription item (whatever its status: usage counted in the last days of a
    cancelled subscription is still owed) whose catalog entry names a meter: the entry's
    `meter_event_name` for the default feature, `metered[feature].meter_event_name` for a
    named one.
    """
    names: list[str] = []
    for sub in state.subscriptions.values():
        for item in sub.items:
            plan = tenant.plan_for(item.lookup_key, item.price, item.product)
            if plan is None:
                continue
            if feature is None:
                name = plan.meter_event_name
            else:
                grant = plan.metered.get(feature)
                name = None if grant is None else grant.meter_event_name
            if name and name not in names:
                names.append(name)
    return tuple(names)


# -- the usage.events record: written by the ingress, read by the usage agent ----------

USAGE_SCHEMA = b"usage-batch/1"
BATCH_ID_HEADER = "qf-batch-id"
REGION_HEADER = "qf-region"
KEY_ID_HEADER = "qf-key-id"


class UsageItem(BaseModel):
    """Units one customer consumed at one edge node since that node's previous batch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    customer_id: str = Field(..., min_length=1, max_length=255)
    units: int = Field(..., ge=1, le=MAX_UNITS, strict=True)
    # The named metered feature the units were spent on; absent: the default feature.
    feature: str | None = Field(None, pattern=FEATURE_PATTERN)


class UsageRecord(BaseModel):
    """The value of one `usage.events` record: one tenant's part of an edge batch.

    `customer_id` is what the edge knows the customer by: the Stripe customer id, or the
    tenant's alias when `customer_alias_key` is set (the usage agent maps it back).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    batch_id: str = Field(..., pattern=BATCH_ID_PATTERN)
    node_id: str
    region: str
    tenant_id: str
    sent_at: float
    received_at: float
    items: tuple[UsageItem, ...]
    # The edge key that verified the report (`wire` key id); scopes the batch's marks.
    # Absent on records written before the ingress recorded it (legacy ids only).
    key_id: str | None = Field(None, max_length=64)
