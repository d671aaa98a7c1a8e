"""Usage batches from the edge → `used` in the customer's quota, once per batch id.

Lives beside the billing transitions because it guards and updates the same state value
(`CustomerState`), so a usage batch and a Stripe event can never overwrite each other's
effects when both are applied in one partition.
"""

from __future__ import annotations

from typing import Any

from tables.billing_state import CustomerState, UsageMark
from tables.dedupe import ID_WINDOW, mark_add, mark_applied, parse_batch_id, remember
from tables.outcome import Outcome, Source, new_state, publish_if_changed, retired_key
from tables.policy import QuotaPolicy
from tables.quota import Reason

__all__ = ["MAX_IDLE_CHECK", "apply_usage"]

# Past this many edge nodes in a customer's usage marks, idle ones are dropped.
MAX_IDLE_CHECK = 16


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
) -> Outcome:
    """Adds a usage batch to the current period, exactly once per batch id.

    Batch ids `node:seq` are tracked per node with a low-water mark plus the applied
    sequence numbers above it (tables/dedupe.py); other ids in a bounded window.
    `customer_id` is the Stripe customer id (the table key); the usage agent maps a
    Rating API alias to it. Duplicates follow `apply_event`'s offset rule.
    """
    if state is None:
        state = new_state(tenant_id, customer_id)
    if source.offset <= state.offsets.get(source.partition, -1):
        return Outcome(None, state.last, True)
    changes: dict[str, Any] = {"offsets": {**state.offsets, source.partition: source.offset}}
    parsed = parse_batch_id(batch_id)
    if parsed is not None:
        node, seq = parsed
        mark = state.usage_marks.get(node, UsageMark())
        if mark_applied(mark.low, mark.above, seq):
            return Outcome(None, None, True)
        low, above = mark_add(mark.low, mark.above, seq)
        marks = {**state.usage_marks, node: UsageMark(low=low, above=above, at=now)}
        if len(marks) > MAX_IDLE_CHECK:
            # Node ids carry a boot id, so marks of restarted nodes would pile up.
            marks = {k: m for k, m in marks.items() if m.at >= now - ID_WINDOW}
        changes["usage_marks"] = marks
    else:
        if batch_id in state.usage_ids:
            return Outcome(None, None, True)
        changes["usage_ids"] = remember(state.usage_ids, batch_id, now)
    changes["used"] = state.used + max(units, 0)
    new = state.model_copy(update=changes)
    update = publish_if_changed(new, now, policy, Reason(kind="usage", id=batch_id))
    if update is not None:
        new.last = update
    return Outcome(new, update, False, (), retired_key(state, update))
