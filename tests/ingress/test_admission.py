"""Unverified admission on a fake clock: failures spend budgets, trust and caps."""

from __future__ import annotations

import pytest

from ingress.admission import TRUST_SECONDS, Admission, AdmissionLimits, source_of
from ingress.exceptions import Overloaded, Throttled
from ingress.shared_trust import SharedTrust
from quotaflow.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail(admission: Admission, route: str | None, remote: str) -> None:
    admitted = admission.enter(route, remote, 100)
    admitted.failed()
    admitted.release()


def test_failures_drain_the_source_budget_but_successes_do_not() -> None:
    clock = FakeClock()
    admission = Admission(AdmissionLimits(source_rate=1.0, source_burst=3), clock)
    for _ in range(10):  # verified requests spend nothing
        admitted = admission.enter("acme", "10.0.0.1", 100)
        admitted.verified()
        admitted.release()
    for _ in range(3):
        fail(admission, "globex", "10.0.0.2")
    with pytest.raises(Throttled) as refused:
        admission.enter("globex", "10.0.0.2", 100)
    assert refused.value.reason == "source_throttled"
    assert refused.value.retry_after == pytest.approx(1.0)
    admission.enter("globex", "10.0.0.3", 100).release()  # another source is unaffected
    clock.now += 1.0
    admission.enter("globex", "10.0.0.2", 100).release()


def test_unknown_tenants_cost_their_source_and_create_no_route_state() -> None:
    admission = Admission(AdmissionLimits(source_burst=2), FakeClock())
    fail(admission, None, "10.0.0.9")
    fail(admission, None, "10.0.0.9")
    with pytest.raises(Throttled, match="failed"):
        admission.enter(None, "10.0.0.9", 100)
    assert admission._routes == {}


def test_many_sources_together_drain_the_route_but_not_its_trusted_sender() -> None:
    clock = FakeClock()
    admission = Admission(AdmissionLimits(tenant_rate=1.0, tenant_burst=5), clock)
    stripe = admission.enter("acme", "3.18.12.63", 100)
    stripe.verified()
    stripe.release()
    for i in range(5):
        fail(admission, "acme", f"10.1.0.{i}")
    with pytest.raises(Throttled) as refused:
        admission.enter("acme", "10.1.0.99", 100)
    assert refused.value.reason == "route_throttled"
    admission.enter("acme", "3.18.12.63", 100).release()  # trusted on acme: admitted
    admission.enter("globex", "10.1.0.99", 100).release()  # other routes unaffected
    clock.now += TRUST_SECONDS
    for i in range(5):
        fail(admission, "acme", f"10.1.1.{i}")
    with pytest.raises(Throttled):  # trust expires
        admission.enter("acme", "3.18.12.63", 100)


def test_trust_on_one_route_is_no_trust_on_another() -> None:
    admission = Admission(AdmissionLimits(source_burst=1), FakeClock())
    own = admission.enter("mallory", "10.2.0.1", 100)
    own.verified()
    own.release()
    fail(admission, "acme", "10.2.0.1")
    with pytest.raises(Throttled):
        admission.enter("acme", "10.2.0.1", 100)
    admission.enter("mallory", "10.2.0.1", 100).release()


def test_source_in_flight_cap_holds_until_verified_or_released() -> None:
    admission = Admission(AdmissionLimits(source_max_in_flight=2), FakeClock())
    first = admission.enter("acme", "10.3.0.1", 100)
    second = admission.enter("acme", "10.3.0.1", 100)
    with pytest.raises(Throttled, match="unverified"):
        admission.enter("acme", "10.3.0.1", 100)
    first.verified()  # verified: the source slot is free though the request goes on
    third = admission.enter("acme", "10.3.0.1", 100)
    for admitted in (first, second, third):
        admitted.release()
        admitted.release()  # idempotent
    assert (admission.in_flight, admission.buffered) == (0, 0)


def test_global_caps_answer_busy() -> None:
    admission = Admission(AdmissionLimits(max_in_flight=2, max_buffered_bytes=1000), FakeClock())
    big = admission.enter("acme", "10.4.0.1", 900)
    with pytest.raises(Overloaded) as busy:
        admission.enter("acme", "10.4.0.2", 200)
    assert (busy.value.status, busy.value.reason) == (503, "ingress_busy")
    small = admission.enter("acme", "10.4.0.2", 100)
    with pytest.raises(Overloaded):
        admission.enter("acme", "10.4.0.3", 0)
    big.release()
    small.release()
    # A body larger than the whole cap still passes alone.
    admission.enter("acme", "10.4.0.3", 5000).release()


def test_source_state_is_bounded() -> None:
    admission = Admission(AdmissionLimits(max_sources=4, source_burst=1), FakeClock())
    for i in range(50):
        fail(admission, None, f"10.5.0.{i}")
    assert len(admission._sources) <= 4


def test_ipv6_sources_share_their_64() -> None:
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::2")
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of(None) == "?"


def test_admission_limits_come_from_settings() -> None:
    limits = AdmissionLimits.from_settings(
        Settings(ingress_unverified_source_rate=3.0, ingress_max_in_flight=9)
    )
    assert (limits.source_rate, limits.max_in_flight) == (3.0, 9)


def test_trust_earned_through_one_worker_holds_in_another() -> None:
    clock = FakeClock()
    table = SharedTrust.create(slots=64)
    try:
        other = SharedTrust(table.path)  # as a second worker maps it
        limits = AdmissionLimits(tenant_rate=1.0, tenant_burst=1)
        worker_a = Admission(limits, clock, shared=table)
        worker_b = Admission(limits, clock, shared=other)
        stripe = worker_a.enter("acme", "3.18.12.63", 100)
        stripe.verified()
        stripe.release()
        fail(worker_b, "acme", "10.6.0.1")  # drains worker B's route budget
        with pytest.raises(Throttled):
            worker_b.enter("acme", "10.6.0.2", 100)
        worker_b.enter("acme", "3.18.12.63", 100).release()  # trusted through worker A
        assert not worker_b.trusted("globex", "3.18.12.63")  # not on another route
        clock.now += TRUST_SECONDS
        assert not worker_b.trusted("acme", "3.18.12.63")  # expired in the shared table too
        other.close()
    finally:
        table.close()
    assert not table.path.exists()
