"""`usage.events` records → `used` in the customers' states, quota records, meter jobs.

Per customer of a record (one tenant's part of an edge batch; the edge knows a customer by
its Stripe id or the tenant's alias, mapped back through the `aliases` table): its items
(the default feature's units and each named metered feature's) in one `apply_usage`, once
per batch id, a quota record when it matters (thresholds), and one meter job per meter
the customer's features are billed on (each feature's units go to its own meter) with an
identifier derived from the batch, so the same batch can only ever make the same Stripe
meter event. A reprocessed offset re-sends its jobs (the
crash may have come between the table write and the send); the identifier makes that
harmless.

Batch ids are deduplicated per (edge key, node, spool incarnation) (tables/dedupe.py); a
batch that opens a new incarnation of a node which had another is listed in
`Effects.spool_resets` (counted and alerted on: the old spool was lost).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import orjson
from pydantic import ValidationError

from quotaflow.registry import TenantRegistry
from streams.processing.effects import Effects, MeterJob, Record, StateCache, Store
from streams.processing.notify import notify_transition, resend_reprocessed
from tables.outcome import Source
from tables.policy import QuotaPolicy
from tables.usage import UsageRecord, apply_usage, meters_of

__all__ = ["UsageProcessor", "meter_identifier"]


def meter_identifier(tenant_id: str, stripe_customer_id: str, meter: str, batch_id: str) -> str:
    """Deterministic: one usage batch of one customer on one meter is one meter event."""
    raw = "\x1f".join((tenant_id, stripe_customer_id, meter, batch_id)).encode()
    return "qf_" + hashlib.blake2b(raw, digest_size=16).hexdigest()


class UsageProcessor:
    """`handle(store, aliases, records) -> Effects` for `usage.events`."""

    def __init__(
        self,
        registry: Callable[[], TenantRegistry | None],
        policy: QuotaPolicy,
        thresholds: Sequence[float],
        clock: Callable[[], float],
    ) -> None:
        self._registry = registry
        self._policy = policy
        self._thresholds = tuple(thresholds)
        self._clock = clock

    def handle(self, store: Store, aliases: Store, records: Sequence[Record]) -> Effects:
        out = Effects()
        cache = StateCache(store)
        for record in records:
            self._one(cache, aliases, record, out)
        cache.write_into(out)
        return out

    def _one(self, cache: StateCache, aliases: Store, record: Record, out: Effects) -> None:
        try:
            usage = UsageRecord.model_validate_json(record.value)
        except ValidationError as exc:
            out.dead(record, "bad_usage_record", str(exc))
            out.count("dead_lettered")
            return
        reg = self._registry()
        tenant = reg.get(usage.tenant_id) if reg is not None else None
        if tenant is None:
            # A record this worker's keyring cannot open is no proof the tenant is gone:
            # its own reason, so `deadletter redrive --reason tenant_unreadable` after the fix.
            unreadable = reg is None or usage.tenant_id in reg.unreadable()
            reason = "tenant_unreadable" if unreadable else "unknown_tenant"
            out.dead(record, reason, usage.tenant_id)
            out.count("dead_lettered")
            return
        partition, offset = record.partition, record.offset
        source = Source(partition, offset)
        now = self._clock()
        published = False
        # One apply per customer: its items of one batch (the default feature's and each
        # named feature's units) share the batch-id and offset guards, so they must land
        # together or not at all.
        for stripe_id, units, features in _by_customer(tenant.id, usage, aliases):
            key = f"{tenant.id}/{stripe_id}".encode()
            state = cache.get(key)
            reprocessed = state is not None and offset <= state.usage_offsets.get(partition, -1)
            if state is not None and reprocessed:
                resend_reprocessed(out, state, record)
                # The worker's own store (RocksDB, written at once) may hold this state while
                # the changelog never got it (killed before the send), and nothing else would
                # write it again: writing it again does (else its `used` is lost with the
                # store, and `used` in the changelog stays short).
                cache.put(key, partition, state)
            outcome = apply_usage(
                state,
                tenant_id=tenant.id,
                customer_id=stripe_id,
                batch_id=usage.batch_id,
                units=units,
                source=source,
                now=now,
                policy=self._policy,
                thresholds=self._thresholds,
                key_id=usage.key_id,
                features=features,
            )
            if outcome.spool_reset:
                out.spool_resets.append((usage.region, usage.node_id))
            if outcome.state is not None:
                told = notify_transition(out, state, outcome.state, tenant, record, now)
                cache.put(key, partition, told)
            for letter in outcome.deadletters:
                out.dead(record, letter.reason, letter.detail)
                out.count("dead_lettered")
            published = out.publish(partition, outcome) or published
            current = outcome.state or state
            if current is None or (outcome.duplicate and not reprocessed):
                continue
            # One job per meter: units of features billed on the same meter add up, so
            # the identifier (one per batch, customer and meter) is never used twice.
            per_meter: dict[str, int] = {}
            for feature, n in ((None, units), *features.items()):
                if n <= 0:
                    continue
                for meter in meters_of(current, tenant, feature):
                    per_meter[meter] = per_meter.get(meter, 0) + n
            for meter, value in per_meter.items():
                job = {
                    "tenant_id": tenant.id,
                    "stripe_customer_id": stripe_id,
                    "event_name": meter,
                    "value": value,
                    "identifier": meter_identifier(tenant.id, stripe_id, meter, usage.batch_id),
                    "timestamp": int(usage.received_at),
                    "batch_id": usage.batch_id,
                }
                out.meter_jobs.append(
                    MeterJob(
                        partition, f"{tenant.id}/{stripe_id}/{meter}".encode(), orjson.dumps(job)
                    )
                )
        out.count("quota_updated" if published else "unchanged")


def _by_customer(
    tenant_id: str, usage: UsageRecord, aliases: Store
) -> list[tuple[str, int, dict[str, int]]]:
    """The record's items per Stripe customer: (id, default units, units per feature)."""
    grouped: dict[str, tuple[list[int], dict[str, int]]] = {}
    for item in usage.items:
        mapped = aliases.get(f"{tenant_id}/{item.customer_id}".encode())
        stripe_id = mapped.decode() if mapped is not None else item.customer_id
        default, features = grouped.setdefault(stripe_id, ([0], {}))
        if item.feature is None:
            default[0] += item.units
        else:
            features[item.feature] = features.get(item.feature, 0) + item.units
    return [(cid, d[0], f) for cid, (d, f) in grouped.items()]
