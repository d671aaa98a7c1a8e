"""Which notifications a change of a customer's state makes: a pure function of the state
before, the state after and the tenant's thresholds.

Derived from transitions, never from a record's appearance:
- `quota.threshold_crossed`: `used` reached a configured fraction of the limit for the
  first time in the period (`NotifyMarks.fired`, reset when the period changes);
- `quota.exhausted`: the published status became `exhausted`;
- `quota.restored`: a told exhaustion is over (the status is `active` or `grace` again:
  a top-up, a bigger plan, a new period);
- `customer.grace_started`: the published status became `grace`;
- `customer.blocked`: the published status became `blocked` from a served one (a
  customer's first record being blocked, before any subscription, is not news);
- `customer.unblocked`: a told block is over.

Each named metered feature (`QuotaUpdate.metered`, its usage in `feature_used`) has its
own `quota.threshold_crossed`, `quota.exhausted` (its `used` reached its limit) and
`quota.restored` (units again: a bigger plan, a new period), with `data.feature` naming it
and its own marks; the customer-level events concern the whole customer and carry none.

The marks live in the customer's state, written in the same changelog record as the
change itself: a replay, a duplicate or a re-drive finds them set and makes nothing new.
The notices made by an input are kept beside it (bounded, `MAX_NOTICES`), so the same
input reprocessed after a crash (the changelog written, the notices perhaps not sent)
re-sends them with the same ids (`reemit`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from tables.billing_state import CustomerState, NotifyMarks, StoredNotice
from tables.notification import Notification, NotificationData, iso_timestamp, notification_id
from tables.quota import QuotaUpdate

__all__ = ["MAX_NOTICES", "derive", "reemit", "source_of"]

# Notices kept per customer for re-emission: an input makes at most one per threshold and
# a few status ones, and only inputs since the last commit can be reprocessed.
MAX_NOTICES = 16
_SERVED = frozenset({"active", "grace", "exhausted"})


def source_of(topic: str, partition: int, offset: int) -> str:
    """The name of an input in `StoredNotice.source`."""
    return f"{topic}:{partition}:{offset}"


def derive(
    before: CustomerState | None,
    after: CustomerState,
    thresholds: Sequence[float],
    *,
    source: str,
    now: float,
    enabled: bool = True,
    features: Collection[str] | None = None,
) -> tuple[CustomerState, tuple[Notification, ...]]:
    """`after` with its marks brought up to date, and the notifications the change makes.

    `thresholds` are the tenant's fractions (ascending). With `enabled` false (the tenant has
    no enabled endpoint) the marks still follow the statuses, so an endpoint added while a
    customer is exhausted still hears of its restoration, but nothing is emitted.
    `features`: the metered features whose notifications are emitted (an enabled endpoint
    asks for them; None: all); every feature's marks follow all the same.
    """
    last = after.last
    if last is None:
        return after, ()
    prev = before.last if before is not None else None
    marks = after.notify
    if marks.period_start != after.period_start:
        marks = NotifyMarks(
            after.period_start,
            (),
            marks.exhausted,
            marks.blocked,
            (),
            marks.features_exhausted,
        )
    made: list[Notification] = []
    fired = list(marks.fired)
    for fraction in _crossed(fired, after.used, last.limit, thresholds):
        fired.append(fraction)
        made.append(_make(after, last, "quota.threshold_crossed", now, threshold=fraction))
    exhausted, blocked = marks.exhausted, marks.blocked
    if prev is None or prev.version != last.version:
        was = prev.status if prev is not None else None
        status = last.status
        if status == "grace" and was != "grace":
            made.append(_make(after, last, "customer.grace_started", now, version=last.version))
        if status == "exhausted" and was != "exhausted":
            made.append(_make(after, last, "quota.exhausted", now, version=last.version))
            exhausted = True
        if status == "blocked" and was in _SERVED:
            made.append(_make(after, last, "customer.blocked", now, version=last.version))
            blocked = True
        if status != "blocked" and blocked:
            made.append(_make(after, last, "customer.unblocked", now, version=last.version))
            blocked = False
        if status in ("active", "grace") and exhausted:
            made.append(_make(after, last, "quota.restored", now, version=last.version))
            exhausted = False
    feature_fired, features_exhausted, per_feature = _derive_features(
        after, last, marks, thresholds, now
    )
    made.extend(n for n in per_feature if features is None or n.data.feature in features)
    new_marks = NotifyMarks(
        marks.period_start,
        tuple(sorted(fired)),
        exhausted,
        blocked,
        feature_fired,
        features_exhausted,
    )
    emitted = tuple(made) if enabled else ()
    changes: dict[str, object] = {}
    if new_marks != after.notify:
        changes["notify"] = new_marks
    if emitted:
        kept = after.notices + tuple(StoredNotice(source, n) for n in emitted)
        changes["notices"] = kept[-MAX_NOTICES:]
    if not changes:
        return after, emitted
    return after.model_copy(update=changes), emitted


def _derive_features(
    after: CustomerState,
    last: QuotaUpdate,
    marks: NotifyMarks,
    thresholds: Sequence[float],
    now: float,
) -> tuple[tuple[tuple[str, tuple[float, ...]], ...], tuple[str, ...], list[Notification]]:
    """The per-feature marks after the change, and the per-feature notifications.

    Derived from the state, not from a published version: a feature's usage below the next
    publishing step still crosses its thresholds. A feature no longer granted keeps its
    exhaustion mark (its restoration is told once it has units again, like the whole
    quota's across a block).
    """
    fired_by = dict(marks.feature_fired)
    exhausted = set(marks.features_exhausted)
    made: list[Notification] = []
    for name in sorted(last.metered):
        quota = last.metered[name]
        limit, used = quota.limit, after.feature_used.get(name, 0)
        fired = list(fired_by.get(name, ()))
        for fraction in _crossed(fired, used, limit, thresholds):
            fired.append(fraction)
            made.append(
                _make(after, last, "quota.threshold_crossed", now, threshold=fraction, feature=name)
            )
        if fired:
            fired_by[name] = tuple(sorted(fired))
        out = limit is not None and limit > 0 and used >= limit
        if out and name not in exhausted:
            made.append(_make(after, last, "quota.exhausted", now, feature=name))
            exhausted.add(name)
        elif not out and name in exhausted and last.status in _SERVED:
            made.append(_make(after, last, "quota.restored", now, feature=name))
            exhausted.discard(name)
    return tuple(sorted(fired_by.items())), tuple(sorted(exhausted)), made


def reemit(state: CustomerState | None, source: str) -> tuple[Notification, ...]:
    """The notifications `source` made the first time it was processed (none if it made
    none or was never processed): a reprocessed input sends them again, same ids."""
    if state is None or not state.notices:
        return ()
    return tuple(n.notification for n in state.notices if n.source == source)


def _crossed(
    fired: Collection[float], used: int, limit: int | None, thresholds: Sequence[float]
) -> list[float]:
    """The fractions of `limit` that `used` reaches and that are not yet in `fired`."""
    if limit is None or limit <= 0:
        return []
    return [f for f in thresholds if f not in fired and used >= f * limit]


def _make(
    state: CustomerState,
    last: QuotaUpdate,
    event_type: str,
    now: float,
    *,
    threshold: float | None = None,
    version: int | None = None,
    feature: str | None = None,
) -> Notification:
    """A notification about the whole quota, or with `feature` about one named metered
    feature: its limit, usage and remaining, its status `exhausted` while it has no units
    left (else the customer's). A feature's status change is caused by the version it was
    derived at, its threshold by the period (`version` is then implied)."""
    if feature is None:
        limit, used = last.limit, state.used
    else:
        limit, used = last.metered[feature].limit, state.feature_used.get(feature, 0)
        version = None if threshold is not None else last.version
    remaining = None if limit is None else max(limit - used, 0)
    status = "exhausted" if feature is not None and remaining == 0 else last.status
    return Notification(
        id=notification_id(
            state.tenant_id,
            state.stripe_customer_id,
            event_type,
            state.period_start,
            threshold=threshold,
            version=version,
            feature=feature,
        ),
        type=event_type,
        timestamp=iso_timestamp(now),
        data=NotificationData(
            tenant_id=state.tenant_id,
            customer_id=last.customer_id,
            stripe_customer_id=state.stripe_customer_id,
            limit=limit,
            used=used,
            remaining=remaining,
            status=status,
            period_start=state.period_start,
            period_end=state.period_end,
            version=last.version,
            threshold=threshold,
            feature=feature,
            grace_until=last.grace_until,
        ),
    )
