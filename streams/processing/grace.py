"""Grace that ends by time alone: which customers are due, and what a tick changes.

The timer in `streams/grace.py` finds customers whose grace has ended (`due_for_blocking`)
and sends a tick through `quota.ticks`; `GraceProcessor.handle` re-evaluates each ticked
customer at its own clock. A tick processed twice, or after the customer paid, changes
nothing: the evaluation is a pure function of the state and the time. A tick that did
change the quota leaves its offset in the state (`tick_offsets`): reprocessed after a
crash, it publishes that quota record again, since the worker may have died after writing
the blocked state and before sending it (the scan would not tick again: the state no
longer says grace).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from quotaflow.registry import TenantRegistry
from streams.processing.effects import Effects, Record, StateCache, Store
from streams.processing.notify import notify_transition, resend_reprocessed
from tables.billing import CustomerState, grace_deadline, reevaluate
from tables.outcome import Outcome
from tables.policy import QuotaPolicy

__all__ = ["GraceProcessor", "due_for_blocking"]


def due_for_blocking(state: CustomerState, now: float, policy: QuotaPolicy) -> bool:
    """Whether the last published quota still says grace although grace has ended."""
    if state.last is None or state.last.status != "grace":
        return False
    deadline = grace_deadline(state, policy)
    return deadline is not None and now >= deadline


class GraceProcessor:
    """`handle(store, ticks) -> Effects`: each tick's value is a customers table key."""

    def __init__(
        self,
        policy: QuotaPolicy,
        clock: Callable[[], float],
        registry: Callable[[], TenantRegistry | None] | None = None,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._registry = registry

    def handle(self, store: Store, records: Sequence[Record]) -> Effects:
        out = Effects()
        cache = StateCache(store)
        for record in records:
            state = cache.get(record.value)
            if state is None:
                out.count("unchanged")  # a customer gone since the scan
                continue
            resend_reprocessed(out, state, record)
            if record.offset <= state.tick_offsets.get(record.partition, -1):
                # This tick changed the quota before, and the worker may have died between
                # the changelog write and the send: publish that record again (same
                # version, so a subscriber that has it ignores it).
                if state.last is not None:
                    out.publish(record.partition, Outcome(None, state.last, True))
                # And the state behind it, which the worker's own store may hold while the
                # changelog never got it (see UsageProcessor).
                cache.put(record.value, record.partition, state)
                out.count("unchanged")
                continue
            now = self._clock()
            outcome = reevaluate(state, now=now, policy=self._policy)
            if outcome.update is not None and outcome.state is not None:
                reg = self._registry() if self._registry is not None else None
                tenant = reg.get(state.tenant_id) if reg is not None else None
                ticked = outcome.state.model_copy(
                    update={"tick_offsets": {**state.tick_offsets, record.partition: record.offset}}
                )
                told = notify_transition(out, state, ticked, tenant, record, now)
                cache.put(record.value, record.partition, told)
                out.publish(record.partition, outcome)
                out.count("quota_updated")
            else:
                out.count("unchanged")
        cache.write_into(out)
        return out
