"""The per-tenant throttle on a fake clock: buckets refill, in-flight caps, tenants apart."""

from __future__ import annotations

from ingress.limits import IngressLimits, TenantThrottle
from quotaflow.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_admits_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    throttle = TenantThrottle(IngressLimits(tenant_rate=2.0, tenant_burst=3), clock)
    assert [throttle.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.acquire("a") == 0.5
    clock.now += 0.5
    assert throttle.acquire("a") == 0.0


def test_in_flight_cap_is_per_tenant_and_released() -> None:
    throttle = TenantThrottle(IngressLimits(tenant_max_in_flight=1), FakeClock())
    assert throttle.acquire("a") == 0.0
    assert throttle.acquire("a") > 0
    assert throttle.acquire("b") == 0.0
    throttle.release("a")
    assert throttle.acquire("a") == 0.0


def test_forget_drops_idle_state_of_removed_tenants() -> None:
    throttle = TenantThrottle(IngressLimits(tenant_burst=1, tenant_rate=1e-9), FakeClock())
    throttle.acquire("gone")
    throttle.release("gone")
    assert throttle.acquire("gone") > 0
    throttle.forget(lambda tenant_id: tenant_id != "gone")
    assert throttle.acquire("gone") == 0.0


def test_limits_come_from_settings() -> None:
    limits = IngressLimits.from_settings(
        Settings(ingress_tenant_rate=7.0, ingress_tenant_max_in_flight=3)
    )
    assert (limits.tenant_rate, limits.tenant_max_in_flight) == (7.0, 3)
    assert limits.tenant_burst == IngressLimits().tenant_burst
