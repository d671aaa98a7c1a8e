"""Admission of unverified webhook requests: budgets an attacker cannot spend for Stripe.

Until its signature checks out, a request is anybody's. It is admitted in this order, each
refusal cheap (no body read, the connection closed):

1. Global caps, shared by every route: requests in flight and body bytes buffered (the
   declared length, or the body limit when none is declared). Over either: 503
   `ingress_busy` (Stripe retries; nothing else can exhaust these but sheer volume).
2. The source's budget (its IP address, an IPv6 /64): at most `source_max_in_flight`
   unverified requests at once, and a bucket of *failures* (bad signatures, unknown
   tenants, bodies too slow or malformed) refilled at `source_rate`. Empty or full: 429
   `source_throttled`.
3. The route's budget (a tenant's route, or the Connect route): a bucket of failures
   refilled at `tenant_rate`, so many sources together cannot make one tenant's route
   cost more than that. Empty: 429 `route_throttled`.

A (route, source) pair that delivered a verified event within `TRUST_SECONDS` is trusted
on that route: it skips steps 2 and 3 (only the global caps apply), so Stripe's own
addresses keep delivering however hard someone else drains the budgets. Trust is per
route: a tenant who knows its own secret earns nothing on another tenant's route. With
several workers on one port, trust is shared through `ingress.shared_trust`; the
budgets themselves are per worker.

Only failures spend tokens, so genuine traffic never drains a bucket. The tenant's
*delivery* budget (`limits.TenantThrottle`) is drawn only after verification.

All state is bounded: routes exist only for known tenants, sources and trusted pairs are
kept in LRU dicts of `max_sources` entries.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ingress.exceptions import Overloaded, Throttled
from ingress.limits import Bucket
from ingress.shared_trust import SharedTrust
from quotaflow.settings import IngressSettings

__all__ = ["CONNECT", "TRUST_SECONDS", "Admission", "AdmissionLimits", "Pass", "source_of"]

TRUST_SECONDS = 3600.0
CONNECT = "@connect"  # the Connect route's budget key (tenant ids cannot start with @)


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """The unverified budgets and global caps; see the module docstring."""

    max_in_flight: int = 1024
    max_buffered_bytes: int = 64 * 1_048_576
    source_rate: float = 20.0  # failures per second, per source
    source_burst: float = 100.0
    source_max_in_flight: int = 64  # concurrent unverified requests, per source
    tenant_rate: float = 100.0  # failures per second, per route
    tenant_burst: float = 500.0
    max_sources: int = 65_536
    retry_after: float = 5.0

    @classmethod
    def from_settings(cls, settings: IngressSettings) -> AdmissionLimits:
        return cls(
            max_in_flight=settings.ingress_max_in_flight,
            max_buffered_bytes=settings.ingress_max_buffered_bytes,
            source_rate=settings.ingress_unverified_source_rate,
            source_burst=settings.ingress_unverified_source_burst,
            source_max_in_flight=settings.ingress_unverified_source_max_in_flight,
            tenant_rate=settings.ingress_unverified_tenant_rate,
            tenant_burst=settings.ingress_unverified_tenant_burst,
            retry_after=settings.ingress_retry_after,
        )


def source_of(remote: str | None) -> str:
    """The budget key of a peer address: the address itself, or its /64 for IPv6."""
    if not remote:
        return "?"
    if ":" not in remote:
        return remote
    try:
        return str(ipaddress.IPv6Network(f"{remote}/64", strict=False))
    except ValueError:
        return remote


class Pass:
    """One admitted request: report `failed()` or `verified()` once, `release()` at the end."""

    __slots__ = ("_admission", "_bytes", "_route", "_source", "_state", "trusted")

    def __init__(
        self, admission: Admission, route: str | None, source: str, nbytes: int, trusted: bool
    ) -> None:
        self._admission = admission
        self._route = route
        self._source = source
        self._bytes = nbytes
        # A trusted pair holds no source slot and spends no failure tokens.
        self.trusted = trusted
        # 0: unverified, holding a source slot; 1: verified or failed; 2: released.
        self._state = 0

    def failed(self) -> None:
        """The request failed before verification: spend one token of its budgets."""
        if self._state == 0:
            self._state = 1
            self._admission.fail(self._route, self._source, self.trusted)

    def verified(self) -> None:
        """The signature checked out: trust the pair, free the source slot early."""
        if self._state == 0:
            self._state = 1
            self._admission.verify(self._route, self._source, self.trusted)

    def release(self) -> None:
        if self._state == 2:
            return
        if self._state == 0:
            self._admission.end_unverified(self._source, self.trusted)
        self._state = 2
        self._admission.end(self._bytes)


class Admission:
    """Admits unverified requests (`enter`) and keeps the budgets; one per process."""

    def __init__(
        self,
        limits: AdmissionLimits,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedTrust | None = None,
    ) -> None:
        """`shared`: the trust table of all workers of the port (`ingress.shared_trust`);
        stamps in it are on `clock`, which must then be the system-wide monotonic clock."""
        self.limits = limits
        self._clock = clock
        self._shared = shared
        self.in_flight = 0
        self.buffered = 0
        self._sources: OrderedDict[str, Bucket] = OrderedDict()
        self._routes: dict[str, Bucket] = {}
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()

    def enter(self, route: str | None, remote: str | None, declared: int) -> Pass:
        """Admits one request or raises `Overloaded` (503) / `Throttled` (429).

        `route` is the route's budget key: a known tenant's id, `CONNECT` for the
        Connect route, None for an unknown tenant (which then costs only its source);
        `declared` is the number of body bytes to reserve.
        """
        limits = self.limits
        if self.in_flight >= limits.max_in_flight or (
            self.buffered + declared > limits.max_buffered_bytes and self.in_flight > 0
        ):
            raise Overloaded(retry_after=limits.retry_after)
        source = source_of(remote)
        trusted = route is not None and self.trusted(route, source)
        if not trusted:
            bucket = self._source(source)
            if bucket.in_flight >= limits.source_max_in_flight:
                raise Throttled(
                    "too many unverified requests", reason="source_throttled", retry_after=1.0
                )
            if bucket.tokens < 1.0:
                raise Throttled(
                    "too many failed requests",
                    reason="source_throttled",
                    retry_after=bucket.wait(limits.source_rate),
                )
            if route is not None:
                self.check_route(route)
            bucket.in_flight += 1
        self.in_flight += 1
        self.buffered += declared
        return Pass(self, route, source, declared, trusted)

    def trusted(self, route: str, source: str) -> bool:
        stamp = self._trusted.get((route, source))
        if stamp is None and self._shared is not None:
            stamp = self._shared.get(route, source)  # verified through another worker
        return stamp is not None and self._clock() - stamp < TRUST_SECONDS

    def check_route(self, route: str) -> None:
        bucket = self._route(route)
        if bucket.tokens < 1.0:
            raise Throttled(
                "too many failed requests on this route",
                reason="route_throttled",
                retry_after=bucket.wait(self.limits.tenant_rate),
            )

    def fail(self, route: str | None, source: str, trusted: bool) -> None:
        if not trusted:
            self.end_unverified(source, trusted)
            bucket = self._sources.get(source)
            if bucket is not None:
                bucket.tokens = max(0.0, bucket.tokens - 1.0)
            if route:
                routed = self._route(route)
                routed.tokens = max(0.0, routed.tokens - 1.0)

    def verify(self, route: str | None, source: str, trusted: bool) -> None:
        self.end_unverified(source, trusted)
        if route:
            key = (route, source)
            now = self._trusted[key] = self._clock()
            if self._shared is not None:
                self._shared.put(route, source, now)
            self._trusted.move_to_end(key)
            while len(self._trusted) > self.limits.max_sources:
                self._trusted.popitem(last=False)

    def end_unverified(self, source: str, trusted: bool) -> None:
        if not trusted:
            bucket = self._sources.get(source)
            if bucket is not None and bucket.in_flight > 0:
                bucket.in_flight -= 1

    def end(self, nbytes: int) -> None:
        self.in_flight -= 1
        self.buffered -= nbytes

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drops the failure budgets of routes `keep` rejects (tenants deleted)."""
        for route in [r for r in self._routes if not keep(r)]:
            del self._routes[route]

    def _source(self, source: str) -> Bucket:
        limits, now = self.limits, self._clock()
        bucket = self._sources.get(source)
        if bucket is None:
            if len(self._sources) >= limits.max_sources:
                self._evict_source()
            bucket = self._sources[source] = Bucket(limits.source_burst, now)
        else:
            bucket.refill(now, limits.source_rate, limits.source_burst)
            self._sources.move_to_end(source)
        return bucket

    def _evict_source(self) -> None:
        # The least recently seen source with nothing in flight; with 65,536 sources
        # holding requests the global in-flight cap (1,024 by default) is long reached.
        for key, bucket in self._sources.items():
            if bucket.in_flight == 0:
                del self._sources[key]
                return

    def _route(self, route: str) -> Bucket:
        limits, now = self.limits, self._clock()
        bucket = self._routes.get(route)
        if bucket is None:
            bucket = self._routes[route] = Bucket(limits.tenant_burst, now)
        else:
            bucket.refill(now, limits.tenant_rate, limits.tenant_burst)
        return bucket
