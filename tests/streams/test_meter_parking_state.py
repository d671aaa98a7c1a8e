"""Parking bookkeeping without a broker: how many jobs a parked tenant keeps, where the
re-read starts, and when it is retried."""

from __future__ import annotations

from aiokafka import TopicPartition

from streams.meter_client import MeterJob
from streams.meter_parking import Parking


def _job(tenant_id: str, n: int) -> MeterJob:
    return MeterJob(tenant_id, "cus_1", "api_calls", n, f"qf_{tenant_id}_{n}", 0, f"node-1:{n}")


def test_a_parked_tenant_holds_at_most_limit_jobs_then_marks_each_partition_once() -> None:
    now = [100.0]
    parking = Parking(limit=2, base_backoff=1.0, max_backoff=8.0, clock=lambda: now[0])
    parking.park("acme", "unauthorized")
    p0, p1 = TopicPartition("meter.jobs", 0), TopicPartition("meter.jobs", 1)
    outcomes = [
        parking.hold((tp, offset, _job("acme", offset)))
        for tp, offset in ((p0, 1), (p0, 2), (p0, 3), (p0, 4), (p1, 7), (p1, 9))
    ]
    assert outcomes == ["held", "held", "marked", "let_go", "marked", "let_go"]
    # An older job parked late (it was queued when the tenant parked) moves the mark down.
    assert parking.hold((p1, 5, _job("acme", 5))) == "marked"
    parked = parking.tenants["acme"]
    assert [offset for _, offset, _ in parked.held] == [1, 2]
    assert parked.marks == {p0: 3, p1: 5}
    assert parking.held_jobs == 2


def test_retries_back_off_and_a_record_change_makes_the_retry_due_at_once() -> None:
    now = [0.0]
    parking = Parking(limit=10, base_backoff=1.0, max_backoff=8.0, clock=lambda: now[0])
    waits = []
    for _ in range(6):
        parked = parking.park("acme", "no_api_key")
        waits.append(parked.retry_at - now[0])
    assert all(0.5 * c <= w <= c for w, c in zip(waits, [1, 2, 4, 8, 8, 8], strict=True))
    assert list(parking.due()) == []
    parking.retry_now("acme")
    assert [p.tenant_id for p in parking.due()] == ["acme"]
    now[0] = 30.0
    assert parking.oldest_age() == 30.0
    assert parking.by_reason()["no_api_key"] == 1
