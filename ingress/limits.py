"""Per-tenant throttling: an in-flight cap and a token bucket, each tenant on its own.

A tenant that floods the ingress (valid or invalid requests) runs out of its own tokens
and gets 429 while every other tenant keeps its full budget. State exists only for
tenants the registry knows, so unknown ids in URLs cannot grow it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from quotaflow.settings import IngressSettings

__all__ = ["Bucket", "IngressLimits", "TenantThrottle"]


@dataclass(frozen=True, slots=True)
class IngressLimits:
    """Ingress knobs not (yet) in `IngressSettings`; the defaults suit one ingress process.

    Proposed settings: QUOTAFLOW_INGRESS_TENANT_RATE, QUOTAFLOW_INGRESS_TENANT_BURST,
    QUOTAFLOW_INGRESS_TENANT_MAX_IN_FLIGHT, QUOTAFLOW_INGRESS_BODY_READ_TIMEOUT,
    QUOTAFLOW_INGRESS_RETRY_AFTER.
    """

    tenant_rate: float = 500.0  # requests per second, sustained, per tenant
    tenant_burst: float = 1000.0  # bucket size, per tenant
    tenant_max_in_flight: int = 256  # concurrent requests per tenant
    body_read_timeout: float = 10.0  # seconds to receive a whole body (slow clients)
    retry_after: float = 5.0  # Retry-After on 503, seconds

    @classmethod
    def from_settings(cls, settings: IngressSettings) -> IngressLimits:
        return cls(
            tenant_rate=settings.ingress_tenant_rate,
            tenant_burst=settings.ingress_tenant_burst,
            tenant_max_in_flight=settings.ingress_tenant_max_in_flight,
            body_read_timeout=settings.ingress_body_read_timeout,
            retry_after=settings.ingress_retry_after,
        )


class Bucket:
    """A token bucket with an in-flight count: full at `burst`, refilled at `rate`.

    Shared by the tenant's delivery budget (a token per request) and the unverified
    budgets of `ingress.admission` (a token per failure).
    """

    __slots__ = ("in_flight", "stamp", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now
        self.in_flight = 0

    def refill(self, now: float, rate: float, burst: float) -> None:
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now

    def wait(self, rate: float) -> float:
        """Seconds until one token is back."""
        return (1.0 - self.tokens) / rate if rate > 0 else 60.0


class TenantThrottle:
    """`acquire(tenant)` admits or refuses one request; `release(tenant)` ends it."""

    def __init__(self, limits: IngressLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = limits.tenant_rate
        self._burst = max(1.0, limits.tenant_burst)
        self._max_in_flight = limits.tenant_max_in_flight
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}

    def acquire(self, tenant_id: str) -> float:
        """0.0 if admitted (the caller must `release`), else seconds until a retry may pass."""
        now = self._clock()
        bucket = self._buckets.get(tenant_id)
        if bucket is None:
            bucket = self._buckets[tenant_id] = Bucket(self._burst, now)
        else:
            bucket.refill(now, self._rate, self._burst)
        if bucket.in_flight >= self._max_in_flight:
            return 1.0
        if bucket.tokens < 1.0:
            return bucket.wait(self._rate)
        bucket.tokens -= 1.0
        bucket.in_flight += 1
        return 0.0

    def release(self, tenant_id: str) -> None:
        bucket = self._buckets.get(tenant_id)
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drops idle state of tenants `keep` rejects (deleted from the registry)."""
        for tenant_id in [t for t, b in self._buckets.items() if b.in_flight == 0]:
            if not keep(tenant_id):
                del self._buckets[tenant_id]
