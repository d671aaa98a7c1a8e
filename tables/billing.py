"""Stripe events → a customer's billing state and quota, exactly once in effect.

`apply_event(state, event, ...)` is a pure function: the stream worker looks the state
up by `customer_of(event)` (table key `tenant_id/stripe_customer_id`), calls it, stores
`Outcome.state` if not None, publishes `Outcome.published()` in order (the update, after
the old key's `retirement` when the customer's alias changed the published id) and
dead-letters `Outcome.deadletters`. A past-due customer's grace ends by time alone:
`grace_deadline(state, policy)` says when, and `reevaluate` publishes the change
(streams/grace.py carries the tick through a topic: RocksDB tables cannot be written from
timers). `apply_usage` applies usage batches to the same state.

Duplicates (checked in this order; the guards live in the state, tables/dedupe.py):
1. Source offset ≤ the offset recorded for its partition: a reprocessing after a crash.
   `Outcome(state=None, update=<the current quota update>, duplicate=True)`: the worker
   re-publishes the current quota, because the crash may have happened after the
   changelog write and before the publish. Same version, so edges ignore a repeat.
2. Event id already applied (Stripe retry, operator replay): `Outcome(state=None,
   update=None, duplicate=True)`.
3. Stripe's second Event for the same change (same type and `data.object` payload as
   the last one applied to that object): `duplicate=True, update=None`, the state only
   records the id and offset.

Order: Stripe does not deliver in order and `created` has one-second resolution, so an
event is a signal. The worker passes `fetched`, the object's current state from Stripe
(the subscription for subscription, invoice and checkout events; the customer for
customer events), or None when fetching is off or Stripe could not be reached. When
Stripe answered, the fetched object decides and the event's own snapshot is not applied;
a 404 never reaches this function (the worker dead-letters the event: the object does
not exist in that account, so nothing is granted). An event's time is its `created`
capped at `received_at`, so a signed event dated in the future cannot outrank what
comes after it. Rules that keep a state from regressing, whichever inputs arrive:

- Each subscription snapshot has an order key (terminal?, latest period start, as-of):
  a snapshot replaces the stored one only if its key is not smaller. As-of is the
  event's (capped) time for an event snapshot and `fetched_at` (default `now`) for a
  fetched object, so a fetched object beats every snapshot of events received before
  the fetch, and an event newer than a cached fetch beats the cache.
- Terminal statuses (`canceled`, `incomplete_expired`) sort last: they never revert.
- Period starts only move forward; a newer period resets `used` and the top-ups.
- A customer snapshot (alias, deletion) applies if its (deleted?, as-of) is not older
  than the stored one; deletion never reverts. The alias is kept once learned: a
  snapshot without it never clears it.
- Invoice events change subscription state only through `fetched`; their own snapshot
  only carries top-ups (below). With fetching off, the subscription's own
  `customer.subscription.updated` events carry the status change.
- Top-ups: a paid invoice (`invoice.paid`, or `invoice.payment_succeeded` of older
  versions) whose lines carry a catalog price marked `topup` adds quota x quantity to
  the limit, once per invoice id, for as long as it was paid (`status_transitions.
  paid_at`, else the event's `created`) inside the current period. A top-up that
  arrives before the renewal it follows still counts once that period is known; a
  replayed invoice of an earlier period adds nothing.

Version: `QuotaUpdate.version` increases by one each time the published quota changes
(limit, used, status, period, features, rate, metered features or published customer
id); nothing is published otherwise. A new period resets `used` and every metered
feature's usage (`feature_used`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tables.billing_state import TERMINAL_STATUSES, CustomerState, ItemState, SubscriptionState
from tables.dedupe import fingerprint, remember
from tables.outcome import (
    DeadLetter,
    Outcome,
    Source,
    new_state,
    publish_if_changed,
    reevaluate,
    retirement,
)
from tables.policy import QuotaPolicy, entitlement_of, grace_deadline, period_of
from tables.quota import QuotaUpdate, Reason
from tables.stripe_objects import (
    MAPS,
    InvoiceView,
    MalformedObject,
    SubscriptionView,
    customer_alias,
    expandable_id,
    read_invoice,
    read_subscription,
)
from tables.tenant import Tenant
from tables.usage import apply_usage

__all__ = [
    "HANDLED_TYPES",
    "CustomerState",
    "DeadLetter",
    "FetchTarget",
    "Outcome",
    "QuotaPolicy",
    "Source",
    "apply_event",
    "apply_usage",
    "current_update",
    "customer_of",
    "fetch_target",
    "grace_deadline",
    "new_state",
    "reevaluate",
]

_SUBSCRIPTION_TYPES = frozenset(
    f"customer.subscription.{t}"
    for t in ("created", "updated", "deleted", "paused", "resumed", "trial_will_end")
)
_CUSTOMER_TYPES = frozenset({"customer.created", "customer.updated", "customer.deleted"})
_INVOICE_TYPES = frozenset(
    {
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.payment_action_required",
    }
)
_PAID_TYPES = frozenset({"invoice.paid", "invoice.payment_succeeded"})
_CHECKOUT = "checkout.session.completed"
_ENTITLEMENTS = "entitlements.active_entitlement_summary.updated"
HANDLED_TYPES = _SUBSCRIPTION_TYPES | _CUSTOMER_TYPES | _INVOICE_TYPES | {_CHECKOUT, _ENTITLEMENTS}
# How many canceled subscriptions a customer keeps (they stop late snapshots reviving them).
MAX_TERMINAL_SUBSCRIPTIONS = 16


@dataclass(frozen=True, slots=True)
class FetchTarget:
    """The Stripe object to fetch for an event: a subscription or a customer."""

    kind: str  # "subscription" | "customer"
    id: str


def _object(event: Mapping[str, Any]) -> Mapping[str, Any] | None:
    data = event.get("data")
    if isinstance(data, MAPS):
        obj = data.get("object")
        if isinstance(obj, MAPS):
            return obj
    return None


def customer_of(event: Mapping[str, Any]) -> str | None:
    """The Stripe customer an event concerns; None for ignored types or no customer."""
    event_type = event.get("type")
    if event_type not in HANDLED_TYPES:
        return None
    obj = _object(event)
    if obj is None:
        return None
    if event_type in _CUSTOMER_TYPES:
        return expandable_id(obj.get("id"))
    return expandable_id(obj.get("customer"))


def fetch_target(event: Mapping[str, Any]) -> FetchTarget | None:
    """Which current object `apply_event` wants as `fetched` for this event, if any."""
    event_type = event.get("type")
    obj = _object(event)
    if obj is None or not isinstance(event_type, str):
        return None
    invoice = None
    if event_type in _INVOICE_TYPES:
        try:
            invoice = read_invoice(obj)
        except MalformedObject:
            return None
    return _target(event_type, obj, invoice)


def _target(
    event_type: str, obj: Mapping[str, Any], invoice: InvoiceView | None
) -> FetchTarget | None:
    if event_type in _SUBSCRIPTION_TYPES:
        sub_id = expandable_id(obj.get("id"))
    elif event_type in _CUSTOMER_TYPES:
        cus_id = expandable_id(obj.get("id"))
        return None if cus_id is None else FetchTarget("customer", cus_id)
    elif invoice is not None:
        sub_id = invoice.subscription
    elif event_type == _CHECKOUT:
        sub_id = expandable_id(obj.get("subscription"))
    else:
        return None
    return None if sub_id is None else FetchTarget("subscription", sub_id)


def current_update(state: CustomerState | None) -> QuotaUpdate | None:
    """The last quota published for the customer (what a duplicate re-emits)."""
    return None if state is None else state.last


def apply_event(
    state: CustomerState | None,
    event: Mapping[str, Any],
    *,
    tenant: Tenant,
    fetched: Mapping[str, Any] | None,
    source: Source,
    now: float,
    policy: QuotaPolicy,
    fetched_at: float | None = None,
    received_at: float | None = None,
    redrive: bool = False,
) -> Outcome:
    """Applies one Stripe event to a customer's state; see the module docstring.

    `received_at` (when the ingress accepted the event) caps the event's own time: a
    signed event cannot claim to be newer than its arrival. `redrive` marks an operator's
    re-drive of a dead letter: it must take effect, so it skips the event-id and payload
    guards (the offset guard still holds, and every transition is idempotent).
    """
    event_id = event.get("id")
    event_type = event.get("type")
    obj = _object(event)
    customer = customer_of(event)
    if not isinstance(event_id, str) or not isinstance(event_type, str) or obj is None:
        return Outcome(None, None, False, (DeadLetter("malformed", "no id, type or data.object"),))
    if event_type not in HANDLED_TYPES:
        return Outcome(None, None, False)
    if customer is None:
        return Outcome(None, None, False, (DeadLetter("malformed", "no customer"),))
    if state is None:
        state = new_state(tenant.id, customer)
    elif customer != state.stripe_customer_id:
        return Outcome(None, None, False, (DeadLetter("misrouted", "state of another customer"),))
    if source.offset <= state.offsets.get(source.partition, -1):
        return Outcome(None, state.last, True)
    created = event.get("created")
    at = (
        float(created)
        if isinstance(created, (int, float)) and not isinstance(created, bool)
        else 0.0
    )
    if received_at is not None and at > received_at:
        at = received_at
    guards: dict[str, Any] = {
        "offsets": {**state.offsets, source.partition: source.offset},
    }
    if event_id in state.event_ids and not redrive:
        return Outcome(None, None, True)
    guards["event_ids"] = remember(state.event_ids, event_id, at)
    object_id = expandable_id(obj.get("id"))
    if object_id is not None:
        fp = fingerprint(event_type, obj)
        last = state.fingerprints.get(object_id)
        if last is not None and last[0] == fp and not redrive:
            return Outcome(state.model_copy(update=guards), None, True)
        guards["fingerprints"] = _remember_fp(state.fingerprints, object_id, fp, at)

    deadletters: list[DeadLetter] = []
    changes: dict[str, Any] = {}
    try:
        if event_type in _CUSTOMER_TYPES:
            _apply_customer(state, event_type, obj, fetched, tenant, at, fetched_at or now, changes)
        elif event_type == _ENTITLEMENTS:
            _apply_entitlements(state, obj, at, changes)
        else:
            candidates: list[tuple[Mapping[str, Any], float]] = []
            invoice = read_invoice(obj) if event_type in _INVOICE_TYPES else None
            target = _target(event_type, obj, invoice)
            if fetched is not None and target is not None and fetched.get("id") == target.id:
                # Stripe answered: its current object decides, the event is only a signal.
                candidates.append((fetched, fetched_at if fetched_at is not None else now))
            elif event_type in _SUBSCRIPTION_TYPES:
                candidates.append((obj, at))
            for candidate, as_of in candidates:
                _apply_subscription(state, candidate, as_of, at, tenant, changes, deadletters)
            if invoice is not None and event_type in _PAID_TYPES:
                _apply_topup(state, invoice, event_type, at, tenant, changes)
    except MalformedObject as exc:
        return Outcome(
            state.model_copy(update=guards), None, False, (DeadLetter("malformed", exc.what),)
        )

    changes.update(guards)
    new = state.model_copy(update=changes)
    update = publish_if_changed(
        new, now, policy, Reason(kind="stripe_event", id=event_id, type=event_type)
    )
    if update is None:
        return Outcome(new, None, False, tuple(deadletters))
    new.last = update  # `new` is our own fresh copy: no second copy needed
    return Outcome(new, update, False, tuple(deadletters), retirement(state, update))


def _remember_fp(
    prints: Mapping[str, tuple[str, float]], object_id: str, fp: str, at: float
) -> dict[str, tuple[str, float]]:
    times = remember({k: v[1] for k, v in prints.items()}, object_id, at)
    return {k: (fp, at) if k == object_id else prints[k] for k in times}


def _apply_customer(
    state: CustomerState,
    event_type: str,
    obj: Mapping[str, Any],
    fetched: Mapping[str, Any] | None,
    tenant: Tenant,
    at: float,
    fetched_as_of: float,
    changes: dict[str, Any],
) -> None:
    candidates: list[tuple[Mapping[str, Any], float, bool]]
    if fetched is not None and fetched.get("id") == state.stripe_customer_id:
        # Stripe answered: its current object decides, the event is only a signal.
        candidates = [(fetched, fetched_as_of, fetched.get("deleted") is True)]
    else:
        candidates = [(obj, at, event_type == "customer.deleted" or obj.get("deleted") is True)]
    deleted, as_of, alias = state.deleted, state.customer_as_of, state.alias
    for candidate, cand_at, cand_deleted in sorted(candidates, key=lambda c: (c[2], c[1])):
        found = customer_alias(candidate.get("metadata"), tenant.customer_alias_key)
        if (cand_deleted, cand_at) >= (deleted, as_of):
            deleted, as_of = cand_deleted, cand_at
            alias = found or alias
        elif alias is None:
            alias = found
    changes.update(deleted=deleted, customer_as_of=as_of, alias=alias)


def _apply_entitlements(
    state: CustomerState, obj: Mapping[str, Any], at: float, changes: dict[str, Any]
) -> None:
    if at < state.entitlements_as_of:
        return
    listing = obj.get("entitlements")
    rows = listing.get("data") if isinstance(listing, MAPS) else None
    if not isinstance(rows, list):
        raise MalformedObject("entitlement summary without entitlements.data")
    keys = sorted(
        {
            r["lookup_key"]
            for r in rows
            if isinstance(r, MAPS) and isinstance(r.get("lookup_key"), str)
        }
    )
    changes.update(entitlements=tuple(keys), entitlements_as_of=at)


def _apply_subscription(
    state: CustomerState,
    obj: Mapping[str, Any],
    as_of: float,
    event_at: float,
    tenant: Tenant,
    changes: dict[str, Any],
    deadletters: list[DeadLetter],
) -> None:
    view = read_subscription(obj)
    if view.customer is not None and view.customer != state.stripe_customer_id:
        raise MalformedObject(f"subscription {view.id} belongs to another customer")
    subs: dict[str, SubscriptionState] = changes.get("subscriptions", state.subscriptions)
    old = subs.get(view.id)
    sub, unknown = _subscription_state(view, as_of, event_at, old, tenant)
    if old is not None and sub.order_key() < old.order_key():
        return
    deadletters.extend(
        DeadLetter("unknown_price", f"subscription {view.id}: price {p} is not in the catalog")
        for p in unknown
    )
    subs = {**subs, view.id: sub}
    if len(subs) > MAX_TERMINAL_SUBSCRIPTIONS:
        subs = _prune_terminal(subs)
    changes["subscriptions"] = subs
    alias_key = tenant.customer_alias_key
    if (changes.get("alias") or state.alias) is None and alias_key is not None:
        found = customer_alias(view.metadata, alias_key)
        if found is not None:
            changes["alias"] = found
    start, end = period_of(subs.values())
    current_start = changes.get("period_start", state.period_start)
    if start is not None and (current_start is None or start > current_start):
        topups: dict[str, tuple[int, int]] = changes.get("topups", state.topups)
        changes.update(
            period_start=start,
            period_end=end,
            used=0,
            feature_used={},
            topups={k: v for k, v in topups.items() if v[0] >= start},
        )
    elif start is not None and start == current_start:
        changes["period_end"] = end


def _subscription_state(
    view: SubscriptionView,
    as_of: float,
    event_at: float,
    old: SubscriptionState | None,
    tenant: Tenant,
) -> tuple[SubscriptionState, tuple[str, ...]]:
    items = tuple(
        ItemState(
            price=i.price,
            lookup_key=i.lookup_key,
            product=i.product,
            quantity=i.quantity,
            period_start=i.period_start,
            period_end=i.period_end,
        )
        for i in view.items
    )
    grant = entitlement_of(items, tenant)
    past_due_since: float | None = None
    if view.status == "past_due":
        if old is not None and old.status == "past_due" and old.past_due_since is not None:
            past_due_since = min(old.past_due_since, event_at or as_of)
        else:
            past_due_since = event_at or as_of
    sub = SubscriptionState(
        id=view.id,
        status=view.status,
        items=items,
        period_start=view.period_start,
        period_end=view.period_end,
        as_of=as_of,
        past_due_since=past_due_since,
        quota=grant.quota,
        rate_per_second=grant.rate_per_second,
        features=grant.features,
        metered=grant.metered,
    )
    return sub, grant.unknown_prices


def _prune_terminal(subs: dict[str, SubscriptionState]) -> dict[str, SubscriptionState]:
    terminal = sorted(
        (s for s in subs.values() if s.status in TERMINAL_STATUSES), key=lambda s: s.as_of
    )
    drop = {s.id for s in terminal[: max(len(subs) - MAX_TERMINAL_SUBSCRIPTIONS, 0)]}
    return {k: v for k, v in subs.items() if k not in drop}


def _apply_topup(
    state: CustomerState,
    invoice: InvoiceView,
    event_type: str,
    event_at: float,
    tenant: Tenant,
    changes: dict[str, Any],
) -> None:
    if event_type == "invoice.payment_succeeded" and invoice.status not in (None, "paid"):
        return
    topups: dict[str, tuple[int, int]] = changes.get("topups", state.topups)
    if invoice.id in topups:
        return
    units = 0
    for line in invoice.lines:
        plan = tenant.plan_for(line.lookup_key, line.price, line.product)
        if plan is not None and plan.topup and plan.quota is not None:
            units += plan.quota * line.quantity
    if units == 0:
        return
    paid_at = invoice.paid_at if invoice.paid_at is not None else int(event_at)
    period_start = changes.get("period_start", state.period_start)
    if period_start is not None and paid_at < period_start:
        return  # bought in an earlier period (a late retry or a replay): nothing to add
    changes["topups"] = {**topups, invoice.id: (paid_at, units)}
