"""The worker's processors, in-process over a dict store: no broker, microseconds each."""

from __future__ import annotations

import time
from typing import Any

import orjson

from quotaflow.envelope import Envelope
from quotaflow.registry import StaticTenantRegistry, TenantRegistry
from streams.deadletter import REDRIVE
from streams.processing.billing import (
    BillingEvent,
    BillingProcessor,
    Fetched,
    FetchResult,
    NotFound,
    Rejected,
    parse,
)
from streams.processing.effects import Effects, Record
from streams.processing.grace import GraceProcessor
from streams.processing.usage import UsageProcessor
from streams.worker_web import WorkerMetrics
from tables.billing import QuotaPolicy
from tables.billing_state import CustomerState
from tables.quota import QuotaUpdate
from tests.tables.factories import BASE_TIME, BASIC, PRO, UNKNOWN, event, make_tenant, subscription

PERIOD = (BASE_TIME, BASE_TIME + 30 * 86400)
TOPIC = "stripe.events"
NOW = float(BASE_TIME + 1000)
Headers = tuple[tuple[str, bytes], ...]


class Offsets:
    def __init__(self) -> None:
        self.next = 0

    def record(
        self,
        body: dict[str, Any],
        tenant: str = "acme",
        *,
        extra: tuple[tuple[str, bytes], ...] = (),
    ) -> Record:
        env = Envelope(tenant, str(body["id"]), str(body["type"]), False, NOW - 1, "s1")
        self.next += 1
        return Record(
            TOPIC, 0, self.next, tenant.encode(), orjson.dumps(body), (*env.headers(), *extra)
        )


def _parsed(registry: TenantRegistry, *records: Record) -> list[BillingEvent]:
    out = []
    for record in records:
        parsed = parse(record, registry)
        assert isinstance(parsed, BillingEvent)
        out.append(parsed)
    return out


def _apply(store: dict[bytes, bytes], items: list[tuple[BillingEvent, FetchResult]]) -> Effects:
    effects = BillingProcessor(QuotaPolicy(), lambda: NOW).apply(store, {}, items)
    for key, (_, value) in effects.states.items():
        store[key] = value
    return effects


def _updates(effects: Effects) -> list[QuotaUpdate]:
    return [u for _, u in effects.quota_updates()]


def test_a_batch_reads_and_writes_each_customer_once_and_publishes_its_newest_version() -> None:
    registry = StaticTenantRegistry([make_tenant()])
    rec = Offsets()
    basic = subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD)
    pro = subscription("sub_1", "cus_1", "active", [(PRO, 1)], period=PERIOD)
    other = subscription("sub_2", "cus_2", "active", [(BASIC, 3)], period=PERIOD)
    events = _parsed(
        registry,
        rec.record(event("customer.subscription.created", basic)),
        rec.record(event("customer.subscription.updated", pro, created=BASE_TIME + 5)),
        rec.record(event("customer.subscription.created", other)),
    )
    store: dict[bytes, bytes] = {}
    effects = _apply(store, [(e, None) for e in events])
    assert sorted(effects.states) == [b"acme/cus_1", b"acme/cus_2"]
    by_key = {u.key: u for u in _updates(effects)}
    assert len(_updates(effects)) == 2
    assert (by_key["acme/cus_1"].limit, by_key["acme/cus_1"].version) == (10_000, 2)
    assert by_key["acme/cus_2"].limit == 3000
    assert effects.outcomes == {"quota_updated": 3}
    # The same records again (a crash before the commit): nothing new, same versions.
    again = _apply(store, [(e, None) for e in events])
    assert {u.key: u.version for u in _updates(again)} == {"acme/cus_1": 2, "acme/cus_2": 1}
    # Each state is written again as it stands: the worker's store may have it while the
    # changelog never got it (killed before the send).
    assert {k: v for k, (_, v) in again.states.items()} == {k: store[k] for k in store}


def test_the_fetched_object_decides_and_a_404_grants_nothing() -> None:
    registry = StaticTenantRegistry([make_tenant()])
    rec = Offsets()
    forged = subscription("sub_1", "cus_1", "active", [(PRO, 5)], period=PERIOD)
    current = subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD)
    (ev,) = _parsed(registry, rec.record(event("customer.subscription.created", forged)))
    store: dict[bytes, bytes] = {}
    effects = _apply(store, [(ev, Fetched(current, NOW))])
    assert [u.limit for u in _updates(effects)] == [1000]

    (ghost,) = _parsed(
        registry,
        rec.record(
            event(
                "customer.subscription.created",
                subscription("sub_404", "cus_9", "active", [(PRO, 9)], period=PERIOD),
            )
        ),
    )
    effects = _apply(store, [(ghost, NotFound(NOW))])
    assert _updates(effects) == []
    assert [(d.reason, d.record.offset) for d in effects.deadletters] == [
        ("not_found", ghost.record.offset)
    ]
    assert b"acme/cus_9" not in store


def test_poison_records_are_rejected_with_their_reason() -> None:
    registry = StaticTenantRegistry([make_tenant()])
    rec = Offsets()
    good = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
    )
    unknown_tenant = parse(rec.record(good, tenant="nobody"), registry)
    assert isinstance(unknown_tenant, Rejected)
    assert unknown_tenant.reason == "unknown_tenant"
    env = Envelope("acme", "evt_x", "x", False, NOW, "s1")
    not_json = parse(Record(TOPIC, 0, 1, b"acme", b"{nope", tuple(env.headers())), registry)
    assert isinstance(not_json, Rejected)
    assert not_json.reason == "malformed"
    no_envelope = parse(Record(TOPIC, 0, 2, b"acme", orjson.dumps(good)), registry)
    assert isinstance(no_envelope, Rejected)
    assert no_envelope.reason == "malformed"
    ignored = event("product.created", {"id": "prod_1", "object": "product"})
    assert parse(rec.record(ignored), registry) is None


def test_a_redriven_dead_letter_takes_effect() -> None:
    tenant = make_tenant()
    rec = Offsets()
    body = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(UNKNOWN, 2)], period=PERIOD),
    )
    store: dict[bytes, bytes] = {}
    (first,) = _parsed(StaticTenantRegistry([tenant]), rec.record(body))
    effects = _apply(store, [(first, None)])
    assert [d.reason for d in effects.deadletters] == ["unknown_price"]
    assert [u.limit for u in _updates(effects)] == [0]
    # The tenant adds the price; the operator re-drives the dead letter.
    fixed = {**tenant.plans, str(UNKNOWN.lookup_key): tenant.plans[str(BASIC.lookup_key)]}
    registry = StaticTenantRegistry([tenant.model_copy(update={"plans": fixed})])
    (plain,) = _parsed(registry, rec.record(body))
    assert _updates(_apply(store, [(plain, None)])) == []  # a Stripe redelivery: duplicate
    (redriven,) = _parsed(registry, rec.record(body, extra=((REDRIVE, b"0:1"),)))
    assert redriven.redrive
    effects = _apply(store, [(redriven, None)])
    assert [u.limit for u in _updates(effects)] == [2000]
    assert effects.deadletters == []
    # `quotaflow replay` copies the re-driven record, headers and all: a replay, not a
    # second re-drive, so the event-id guard holds for it.
    (replayed,) = _parsed(
        registry, rec.record(body, extra=((REDRIVE, b"0:1"), ("qf-replay", b"r1")))
    )
    assert not replayed.redrive
    assert _apply(store, [(replayed, None)]).outcomes == {"unchanged": 1}


def test_a_redriven_unknown_tenant_or_not_found_event_applies_once_the_fix_is_in() -> None:
    # Neither reason touches the customer's state, so the re-drive is applied as new.
    tenant = make_tenant()
    rec = Offsets()
    body = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
    )
    rejected = parse(rec.record(body), StaticTenantRegistry([]))
    assert isinstance(rejected, Rejected)
    assert rejected.reason == "unknown_tenant"
    store: dict[bytes, bytes] = {}
    (missing,) = _parsed(StaticTenantRegistry([tenant]), rec.record(body))
    gone = _apply(store, [(missing, NotFound(NOW))])
    assert [d.reason for d in gone.deadletters] == ["not_found"]
    assert store == {}
    registry = StaticTenantRegistry([tenant])
    (redriven,) = _parsed(registry, rec.record(body, extra=((REDRIVE, b"0:1"),)))
    assert [u.limit for u in _updates(_apply(store, [(redriven, None)]))] == [1000]


def test_a_redriven_usage_batch_counts_once_whether_or_not_it_was_applied() -> None:
    # Usage keeps every guard on a re-drive (`qf-redrive`): its batch mark is what makes
    # a batch count once, and a batch dead-lettered before any apply has no mark yet.
    tenant = make_tenant()
    rec = Offsets()
    store: dict[bytes, bytes] = {}
    body = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
    )
    _apply(store, [(e, None) for e in _parsed(StaticTenantRegistry([tenant]), rec.record(body))])
    nobody = StaticTenantRegistry([])
    registry = StaticTenantRegistry([tenant])

    def usage(offset: int, batch: str, redrive: bool) -> Record:
        doc = {
            "batch_id": batch,
            "node_id": "n1",
            "region": "eu",
            "tenant_id": "acme",
            "sent_at": NOW,
            "received_at": NOW,
            "items": [{"customer_id": "cus_1", "units": 7}],
        }
        headers = ((REDRIVE, b"0:9"),) if redrive else ()
        return Record("usage.events", 0, offset, b"acme", orjson.dumps(doc), headers)

    def handle(reg: StaticTenantRegistry, record: Record) -> Effects:
        effects = UsageProcessor(lambda: reg, QuotaPolicy(), (0.5, 1.0), lambda: NOW).handle(
            store, {}, [record]
        )
        for key, (_, value) in effects.states.items():
            store[key] = value
        return effects

    lost = handle(nobody, usage(0, "n1:1", redrive=False))
    assert [d.reason for d in lost.deadletters] == ["unknown_tenant"]
    handle(registry, usage(1, "n1:2", redrive=False))
    handle(registry, usage(2, "n1:1", redrive=True))  # the dead letter, re-driven: counts
    handle(registry, usage(3, "n1:2", redrive=True))  # applied already: does not
    assert CustomerState.model_validate_json(store[b"acme/cus_1"]).used == 14


def test_usage_counts_once_per_batch_and_makes_meter_jobs() -> None:
    tenant = make_tenant(
        {
            "basic": make_tenant().plans["basic"].model_copy(update={"meter_event_name": "api"}),
        }
    )
    registry = StaticTenantRegistry([tenant])
    store: dict[bytes, bytes] = {}
    rec = Offsets()
    body = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
    )
    _apply(store, [(e, None) for e in _parsed(registry, rec.record(body))])
    processor = UsageProcessor(lambda: registry, QuotaPolicy(), (0.5, 1.0), lambda: NOW)

    def usage(offset: int, batch: str, units: int) -> Record:
        doc = {
            "batch_id": batch,
            "node_id": batch.split(":")[0],
            "region": "eu",
            "tenant_id": "acme",
            "sent_at": NOW,
            "received_at": NOW,
            "items": [{"customer_id": "cus_1", "units": units}],
        }
        return Record("usage.events", 0, offset, b"acme", orjson.dumps(doc))

    effects = processor.handle(store, {}, [usage(0, "n1:1", 600), usage(1, "n1:1", 600)])
    for key, (_, value) in effects.states.items():
        store[key] = value
    state = CustomerState.model_validate_json(store[b"acme/cus_1"])
    assert state.used == 600  # the second record repeats batch n1:1
    assert len(effects.meter_jobs) == 1
    assert [u.status for u in _updates(effects)] == ["active"]  # crossed 50 %
    # Reprocessed after a crash: `used` unchanged, the state written again as it stands
    # (the changelog may never have got it), the batch's meter job made again.
    again = processor.handle(store, {}, [usage(0, "n1:1", 600)])
    assert again.states == {b"acme/cus_1": (0, store[b"acme/cus_1"])}
    assert len(again.meter_jobs) == 1
    bad = processor.handle(store, {}, [Record("usage.events", 0, 2, b"acme", b"[]")])
    assert [d.reason for d in bad.deadletters] == ["bad_usage_record"]


def test_a_reset_spool_is_counted_once_per_customer_and_its_usage_counts() -> None:
    registry = StaticTenantRegistry([make_tenant()])
    store: dict[bytes, bytes] = {}
    processor = UsageProcessor(lambda: registry, QuotaPolicy(), (0.5, 1.0), lambda: NOW)
    old, new = "00000000000000aa", "00000000000000bb"

    def usage(offset: int, batch: str, key_id: str) -> Record:
        doc = {
            "batch_id": batch,
            "node_id": "n1",
            "region": "eu",
            "tenant_id": "acme",
            "sent_at": NOW,
            "received_at": NOW,
            "items": [{"customer_id": "cus_1", "units": 5}, {"customer_id": "cus_2", "units": 1}],
            "key_id": key_id,
        }
        return Record("usage.events", 0, offset, b"acme", orjson.dumps(doc))

    first = processor.handle(store, {}, [usage(0, f"n1:{old}:1", "k1")])
    assert first.spool_resets == []
    for key, (_, value) in first.states.items():
        store[key] = value
    # The node's spool started over: seq 1 again, another incarnation, same key.
    reset = processor.handle(
        store, {}, [usage(1, f"n1:{new}:1", "k1"), usage(2, f"n1:{new}:2", "k1")]
    )
    assert reset.spool_resets == [("eu", "n1"), ("eu", "n1")]  # cus_1 and cus_2, once each
    for key, (_, value) in reset.states.items():
        store[key] = value
    assert CustomerState.model_validate_json(store[b"acme/cus_1"]).used == 15
    metrics = WorkerMetrics()
    metrics.observe(reset)
    assert metrics.registry.get_sample_value("quotaflow_usage_spool_resets_total") == 2


class _Unreadable(StaticTenantRegistry):
    """A registry that holds a record it cannot read (as the topic registry does with an
    incomplete keyring): the collaborator, not the processor under test."""

    def unreadable(self) -> dict[str, str]:
        return {"acme": "stripe_api_key"}


def test_a_tenant_whose_record_cannot_be_read_is_dead_lettered_as_unreadable_not_unknown() -> None:
    registry = _Unreadable()
    processor = UsageProcessor(lambda: registry, QuotaPolicy(), (0.5, 1.0), lambda: NOW)
    doc = {
        "batch_id": "n1:1",
        "node_id": "n1",
        "region": "eu",
        "tenant_id": "acme",
        "sent_at": NOW,
        "received_at": NOW,
        "items": [{"customer_id": "cus_1", "units": 3}],
    }
    usage = processor.handle({}, {}, [Record("usage.events", 0, 0, b"acme", orjson.dumps(doc))])
    assert [d.reason for d in usage.deadletters] == ["tenant_unreadable"]
    good = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
    )
    billing = parse(Offsets().record(good), registry)
    assert isinstance(billing, Rejected)
    assert billing.reason == "tenant_unreadable"
    assert parse(Offsets().record(good, tenant="nobody"), registry) == Rejected(
        "unknown_tenant", "nobody"
    )


def test_a_grace_tick_blocks_a_customer_whose_grace_ended() -> None:
    policy = QuotaPolicy(grace_seconds=10)
    registry = StaticTenantRegistry([make_tenant()])
    rec = Offsets()
    store: dict[bytes, bytes] = {}
    past_due = event(
        "customer.subscription.updated",
        subscription("sub_1", "cus_1", "past_due", [(BASIC, 1)], period=PERIOD),
        created=BASE_TIME,
    )
    items: list[tuple[BillingEvent, FetchResult]] = [
        (e, None) for e in _parsed(registry, rec.record(past_due))
    ]
    effects = BillingProcessor(policy, lambda: float(BASE_TIME + 1)).apply(store, {}, items)
    store.update({k: v for k, (_, v) in effects.states.items()})
    assert [u.status for u in _updates(effects)] == ["grace"]
    tick = Record("quota.ticks", 0, 0, b"acme", b"acme/cus_1")
    early = GraceProcessor(policy, lambda: float(BASE_TIME + 5)).handle(store, [tick])
    assert _updates(early) == []
    late = GraceProcessor(policy, time.time).handle(store, [tick])
    assert [u.status for u in _updates(late)] == ["blocked"]


def test_a_reprocessed_grace_tick_publishes_its_block_again() -> None:
    """The worker may die after writing the blocked state and before sending it: the tick,
    not yet acknowledged, comes again; the state no longer says grace, so only the tick's
    mark in the state can tell that the block must be published again."""
    policy = QuotaPolicy(grace_seconds=10)
    registry = StaticTenantRegistry([make_tenant()])
    store: dict[bytes, bytes] = {}
    past_due = event(
        "customer.subscription.updated",
        subscription("sub_1", "cus_1", "past_due", [(BASIC, 1)], period=PERIOD),
        created=BASE_TIME,
    )
    items: list[tuple[BillingEvent, FetchResult]] = [
        (e, None) for e in _parsed(registry, Offsets().record(past_due))
    ]
    effects = BillingProcessor(policy, lambda: float(BASE_TIME + 1)).apply(store, {}, items)
    store.update({k: v for k, (_, v) in effects.states.items()})
    grace = GraceProcessor(policy, time.time)
    tick = Record("quota.ticks", 0, 7, b"acme", b"acme/cus_1")
    first = grace.handle(store, [tick])
    store.update({k: v for k, (_, v) in first.states.items()})  # written, then the kill
    (blocked,) = _updates(first)
    assert blocked.status == "blocked"

    again = grace.handle(store, [tick])
    assert _updates(again) == [blocked]  # same record, same version
    assert list(again.states) == [b"acme/cus_1"]  # the state written again
    later = grace.handle(store, [Record("quota.ticks", 0, 8, b"acme", b"acme/cus_1")])
    assert _updates(later) == []  # a later tick (the scan's next one) publishes nothing
