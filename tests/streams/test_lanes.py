"""The billing lanes: concurrent reads, per-customer order, per-tenant isolation, bounds.

The fetch here is a function the test controls (each read waits on its own gate), so
every assertion is about order and counts, never about time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from pydantic import SecretStr

from quotaflow.envelope import Envelope
from streams.lanes import LaneLimits, Lanes
from streams.processing.billing import BillingEvent, Fetched, FetchResult
from streams.processing.effects import Record
from tables.billing import FetchTarget
from tests.tables.factories import make_tenant

_offsets: Iterator[int] = iter(range(1_000_000))


def _event(tenant: str, customer: str, partition: int = 0, *, key: bool = True) -> BillingEvent:
    offset = next(_offsets)
    record = Record("stripe.events", partition, offset, tenant.encode(), b"{}")
    api_key = SecretStr(f"sk_test_{tenant}") if key else None
    return BillingEvent(
        record=record,
        tenant=make_tenant(tenant_id=tenant).model_copy(update={"stripe_api_key": api_key}),
        envelope=Envelope(tenant, f"evt_{offset}", "customer.subscription.updated", False, 0, "s"),
        body={},
        key=f"{tenant}/{customer}".encode(),
        target=FetchTarget("subscription", f"sub_{customer}"),
        redrive=False,
    )


class Stripe:
    """A fetch whose reads each wait on a gate; counts what is in flight."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}
        self.answers: dict[int, FetchResult] = {}
        self.in_flight: dict[str, int] = {}
        self.max_in_flight = 0
        self.calls = 0

    async def fetch(self, event: BillingEvent) -> FetchResult:
        tenant = event.tenant.id
        self.calls += 1
        self.in_flight[tenant] = self.in_flight.get(tenant, 0) + 1
        self.max_in_flight = max(self.max_in_flight, sum(self.in_flight.values()))
        try:
            await self.gates.setdefault(event.record.offset, asyncio.Event()).wait()
        finally:
            self.in_flight[tenant] -= 1
        return self.answers.get(event.record.offset, Fetched({"id": "x"}, 0.0))

    def release(self, *events: BillingEvent) -> None:
        for event in events:
            self.gates.setdefault(event.record.offset, asyncio.Event()).set()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _offsets_of(ready: list[tuple[BillingEvent, FetchResult, Any]]) -> list[int]:
    return [e.record.offset for e, _, _ in ready]


async def test_every_read_of_a_burst_is_in_flight_at_once() -> None:
    stripe = Stripe()
    lanes = Lanes(stripe.fetch, LaneLimits(max_in_flight=256, tenant_max_in_flight=32))
    events = [_event(f"t{n % 6}", f"cus_{n}") for n in range(120)]
    for event in events:
        await lanes.admit(event, event)
    await _settle()
    assert stripe.max_in_flight == 120
    assert lanes.in_flight == 120
    assert lanes.take_ready() == []
    stripe.release(*events)
    await _settle()
    assert sorted(_offsets_of(lanes.take_ready())) == sorted(e.record.offset for e in events)
    assert lanes.queued == 0
    await lanes.close()


async def test_reads_are_capped_per_tenant_and_globally() -> None:
    stripe = Stripe()
    lanes = Lanes(stripe.fetch, LaneLimits(max_in_flight=5, tenant_max_in_flight=2))
    busy = [_event("busy", f"cus_{n}") for n in range(10)]
    quiet = [_event(f"q{n}", "cus_1") for n in range(10)]
    for event in busy + quiet:
        await lanes.admit(event, event)
    await _settle()
    assert stripe.in_flight["busy"] == 2
    assert sum(stripe.in_flight.values()) == 5
    stripe.release(*busy, *quiet)
    await _settle()
    assert len(lanes.take_ready()) == 20
    await lanes.close()


async def test_a_stalled_tenant_does_not_hold_back_another_tenants_events() -> None:
    stripe = Stripe()
    lanes = Lanes(stripe.fetch)
    stalled = [_event("slow", f"cus_{n}") for n in range(5)]
    healthy = [_event("fast", "cus_1"), _event("fast", "cus_2")]
    for event in [*stalled, *healthy]:
        await lanes.admit(event, event)
    stripe.release(*healthy)
    await _settle()
    assert _offsets_of(lanes.take_ready()) == [e.record.offset for e in healthy]
    assert lanes.queued == len(stalled)
    stripe.release(*stalled)
    await _settle()
    assert len(lanes.take_ready()) == len(stalled)
    await lanes.close()


async def test_a_customers_events_leave_in_partition_order() -> None:
    stripe = Stripe()
    lanes = Lanes(stripe.fetch)
    first, second, third = (_event("acme", "cus_1") for _ in range(3))
    for event in (first, second, third):
        await lanes.admit(event, event)
    stripe.release(third, second)  # answers arrive out of order
    await _settle()
    assert lanes.take_ready() == []  # the head still waits for Stripe
    stripe.release(first)
    await _settle()
    assert _offsets_of(lanes.take_ready()) == [
        first.record.offset,
        second.record.offset,
        third.record.offset,
    ]
    await lanes.close()


async def test_a_failing_stripe_is_retried_then_the_snapshot_is_used_and_counted() -> None:
    down = True
    calls = 0

    async def fetch(event: BillingEvent) -> FetchResult:
        nonlocal calls
        calls += 1
        return None if down else Fetched({"id": "sub"}, 1.0)

    lanes = Lanes(fetch, LaneLimits(fallback_after=0.05, first_backoff=0.005, max_backoff=0.01))

    async def through(event: BillingEvent) -> FetchResult:
        await lanes.admit(event, event)
        async with asyncio.timeout(5):
            while True:
                await lanes.wait_ready()
                ready = lanes.take_ready()
                if ready:
                    return ready[0][1]

    assert await through(_event("acme", "cus_1")) is None
    assert calls > 1  # retried before giving up
    assert lanes.fallbacks == 1
    assert lanes.tenants_by_state() == {"retrying": [], "degraded": ["acme"]}
    # Degraded: the next read is tried once, and falls back at once.
    before = calls
    assert await through(_event("acme", "cus_2")) is None
    assert calls == before + 1
    assert lanes.fallbacks == 2
    # Stripe is back: the next answer clears the tenant's state.
    down = False
    assert await through(_event("acme", "cus_3")) == Fetched({"id": "sub"}, 1.0)
    assert lanes.tenants_by_state() == {"retrying": [], "degraded": []}
    await lanes.close()


async def test_a_full_tenant_lane_pauses_its_partition_and_resumes_below_half() -> None:
    stripe = Stripe()
    pressure: list[tuple[int, bool]] = []
    lanes = Lanes(
        stripe.fetch,
        LaneLimits(tenant_max_queued=4),
        pressure=lambda partition, paused: pressure.append((partition, paused)),
    )
    flood = [_event("flood", f"cus_{n}", partition=3) for n in range(6)]
    other = _event("calm", "cus_1", partition=5)
    for event in [*flood, other]:
        await lanes.admit(event, event)
    assert pressure == [(3, True)]
    assert lanes.paused_partitions == {3}
    stripe.release(other, *flood[:2])
    await _settle()
    lanes.take_ready()
    assert pressure == [(3, True)]  # 4 still queued: above half
    stripe.release(*flood[2:])
    await _settle()
    lanes.take_ready()
    assert pressure == [(3, True), (3, False)]
    await lanes.close()


async def test_the_read_ahead_is_bounded() -> None:
    stripe = Stripe()
    lanes = Lanes(stripe.fetch, LaneLimits(max_queued=3))
    events = [_event("acme", f"cus_{n}") for n in range(4)]
    for event in events[:3]:
        await lanes.admit(event, event)
    fourth = asyncio.create_task(lanes.admit(events[3], events[3]))
    await _settle()
    assert not fourth.done()
    stripe.release(events[0])
    await _settle()
    lanes.take_ready()
    await _settle()
    assert fourth.done()
    stripe.release(*events)
    await lanes.close()


async def test_a_tenant_without_a_stripe_key_is_applied_from_its_snapshots_at_once() -> None:
    stripe = Stripe()
    lanes = Lanes(stripe.fetch)
    event = _event("keyless", "cus_1", key=False)
    await lanes.admit(event, event)
    assert [(e.record.offset, r) for e, r, _ in lanes.take_ready()] == [(event.record.offset, None)]
    assert stripe.calls == 0
    await lanes.close()
