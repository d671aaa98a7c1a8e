"""Notifications in the processors: each applied input's transition goes through
`tables.notifications.derive`, and a reprocessed input re-sends what it made before.

Called by every processor right where it puts a customer's new state into its batch's
`StateCache`, so the marks that say what was told are written in the same changelog record
as the change they describe (exactly once in effect, like the quota itself).
"""

from __future__ import annotations

from streams.processing.effects import Effects, Record
from tables.billing_state import CustomerState
from tables.notifications import derive, reemit, source_of
from tables.tenant import Tenant

__all__ = ["notify_transition", "resend_reprocessed"]


def notify_transition(
    out: Effects,
    before: CustomerState | None,
    after: CustomerState,
    tenant: Tenant | None,
    record: Record,
    now: float,
) -> CustomerState:
    """`after` with its notification marks updated; queues what the transition tells.
    Without the tenant (a grace tick whose registry is not loaded) the marks wait for the
    next transition: nothing is lost, a resolution is told then."""
    if tenant is None:
        return after
    state, made = derive(
        before,
        after,
        tenant.notification_thresholds,
        source=source_of(record.topic, record.partition, record.offset),
        now=now,
        enabled=tenant.notifies,
        features=tenant.notification_features,
    )
    for notification in made:
        out.notifications.append((record.partition, notification))
    return state


def resend_reprocessed(out: Effects, state: CustomerState | None, record: Record) -> None:
    """Queues again the notifications `record` made when it was first processed: the
    worker may have died after the changelog write and before their send."""
    for notification in reemit(state, source_of(record.topic, record.partition, record.offset)):
        out.notifications.append((record.partition, notification))
