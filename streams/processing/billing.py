"""Stripe event records → customer states, quota records and dead letters.

Two steps, because the fetch from Stripe sits between them and belongs to the pipeline:
`parse` reads a record (envelope, tenant, body) and says which customer it concerns and
which Stripe object to fetch; `BillingProcessor.apply` applies parsed events with what
the fetch answered, in the order given (each customer's events in partition order).

Errors by kind: input that can never succeed (a body that is not JSON, headers that are
not an envelope, a tenant nobody knows, an object Stripe says does not exist, a price
outside the catalog) becomes a dead letter here; nothing in this module can fail because
of infrastructure, so whatever the sink fails to write is retried, never dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from quotaflow.envelope import Envelope
from quotaflow.registry import TenantRegistry
from streams.deadletter import REDRIVE, REPLAY
from streams.processing.effects import Effects, Record, StateCache, Store
from streams.processing.notify import notify_transition, resend_reprocessed
from tables.billing import FetchTarget, QuotaPolicy, Source, apply_event, customer_of, fetch_target
from tables.billing_state import CustomerState
from tables.tenant import Tenant

__all__ = [
    "BillingEvent",
    "BillingProcessor",
    "FetchResult",
    "Fetched",
    "NotFound",
    "parse",
]


class Fetched(NamedTuple):
    """A Stripe object as fetched, with the wall-clock time the request started."""

    object: dict[str, Any]
    at: float


class NotFound(NamedTuple):
    """Stripe answered 404: the object does not exist in the tenant's account."""

    at: float


# None: Stripe could not be reached (fetching off, or it stayed down past the deadline).
FetchResult = Fetched | NotFound | None


@dataclass(frozen=True, slots=True)
class BillingEvent:
    """A parsed `stripe.events` record, ready for its fetch and its apply."""

    record: Record
    tenant: Tenant
    envelope: Envelope
    body: dict[str, Any]
    key: bytes  # the customers table key, tenant/stripe_customer_id
    target: FetchTarget | None
    redrive: bool

    @property
    def source(self) -> Source:
        return Source(self.record.partition, self.record.offset)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that goes to the dead letters without being applied."""

    reason: str
    detail: str


def parse(record: Record, registry: TenantRegistry) -> BillingEvent | Rejected | None:
    """What `record` asks for; None when it concerns no customer (a type we ignore)."""
    try:
        env = Envelope.from_headers(record.headers)
    except (KeyError, ValueError) as exc:
        return Rejected("malformed", f"envelope headers: {type(exc).__name__}")
    tenant = registry.get(env.tenant_id)
    if tenant is None:
        # Unreadable here (keyring incomplete) is not unknown: redrive it after the fix.
        unreadable = env.tenant_id in registry.unreadable()
        return Rejected("tenant_unreadable" if unreadable else "unknown_tenant", env.tenant_id)
    try:
        body = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        return Rejected("malformed", f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        return Rejected("malformed", "body is not a JSON object")
    customer = customer_of(body)
    if customer is None:
        return None
    return BillingEvent(
        record=record,
        tenant=tenant,
        envelope=env,
        body=body,
        key=f"{tenant.id}/{customer}".encode(),
        target=fetch_target(body),
        redrive=record.header(REDRIVE) is not None and record.header(REPLAY) is None,
    )


class BillingProcessor:
    """Applies parsed events with their fetch results: `apply(store, aliases, items)`."""

    def __init__(self, policy: QuotaPolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock

    def reject(self, effects: Effects, record: Record, rejected: Rejected) -> None:
        effects.dead(record, rejected.reason, rejected.detail)
        effects.count("dead_lettered")

    def apply(
        self,
        store: Store,
        aliases: Store,
        items: Sequence[tuple[BillingEvent, FetchResult]],
        effects: Effects | None = None,
    ) -> Effects:
        """Applies `items` in order; one state read and write per customer."""
        out = effects if effects is not None else Effects()
        cache = StateCache(store)
        now = self._clock()
        for event, fetched in items:
            self._apply_one(cache, aliases, event, fetched, now, out)
        cache.write_into(out)
        return out

    def _apply_one(
        self,
        cache: StateCache,
        aliases: Store,
        event: BillingEvent,
        fetched: FetchResult,
        now: float,
        out: Effects,
    ) -> None:
        record = event.record
        if isinstance(fetched, NotFound):
            target = event.target
            what = f"{target.kind} {target.id}" if target is not None else "object"
            out.dead(record, "not_found", f"{what} does not exist in the tenant's Stripe account")
            out.count("dead_lettered")
            return
        state = cache.get(event.key)
        if state is not None and record.offset <= state.offsets.get(record.partition, -1):
            resend_reprocessed(out, state, record)
            # Reprocessed after a crash: the worker's own store (RocksDB, written at once)
            # may hold this state while the changelog never got it (killed before the
            # send), and nothing else would write it again: writing it again does.
            cache.put(event.key, record.partition, state)
        try:
            outcome = apply_event(
                state,
                event.body,
                tenant=event.tenant,
                fetched=None if fetched is None else fetched.object,
                fetched_at=None if fetched is None else fetched.at,
                source=event.source,
                now=now,
                policy=self._policy,
                received_at=event.envelope.received_at,
                redrive=event.redrive,
            )
        except Exception as exc:  # noqa: BLE001 - a bug must cost one event, not the worker
            out.dead(record, "processing_error", f"{type(exc).__name__}: {exc}")
            out.count("dead_lettered")
            return
        if outcome.state is not None:
            told = notify_transition(out, state, outcome.state, event.tenant, record, now)
            cache.put(event.key, record.partition, told)
            _remember_alias(aliases, told, record.partition, out)
        published = out.publish(record.partition, outcome)
        for letter in outcome.deadletters:
            out.dead(record, letter.reason, letter.detail)
        if outcome.deadletters:
            out.count("dead_lettered")
        else:
            out.count("quota_updated" if published and not outcome.duplicate else "unchanged")


def _remember_alias(aliases: Store, state: CustomerState, partition: int, out: Effects) -> None:
    """`tenant/alias` → Stripe id, for the usage agent (edges report usage by alias)."""
    if not state.alias:
        return
    key = f"{state.tenant_id}/{state.alias}".encode()
    value = state.stripe_customer_id.encode()
    pending = out.aliases.get(key)
    current = pending[1] if pending is not None else aliases.get(key)
    if current != value:
        out.aliases[key] = (partition, value)
