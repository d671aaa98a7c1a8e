"""Read ahead, fetch concurrently, apply in order: the billing worker's lanes.

The billing agent admits every event it is handed (`admit`) without waiting for it. An
event that needs a Stripe read starts it at once, bounded by three things: the account's
token bucket (in `StripeReader`), a cap on reads in flight per tenant, and a global cap.
Each customer has a lane: its events leave in partition order, as soon as the one at the
head has its answer (`ready`), so a slow read holds back only the events of the same
customer behind it, never another customer's or another tenant's.

A tenant whose Stripe is slow, failing or rate-limited waits in its own lanes:
- a read that fails (timeout, 5xx, 429, a refused key) is retried with exponential
  backoff, holding one of the tenant's slots but not a global one, for up to
  `fallback_after` seconds; then the event is applied with its own snapshot (the design's
  fallback for a Stripe that cannot be reached) and the tenant counts as `degraded`:
  its next reads are tried once each, until one succeeds;
- past `tenant_max_queued` waiting events, the tenant's partition is paused (`pressure`
  callback): the other tenants of that partition wait too, the rest of the worker does
  not. It resumes below half of that.
- past `max_queued` events in all lanes, `admit` waits: the worker's whole read-ahead is
  bounded.

Nothing here knows Faust: the adapter passes an opaque handle (the Faust event) with each
event and gets it back, in order per customer, from `take_ready`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from streams.processing.billing import BillingEvent, FetchResult

log = logging.getLogger("quotaflow.worker.lanes")

Fetch = Callable[[BillingEvent], Awaitable[FetchResult]]
_PENDING: Any = object()


@dataclass(frozen=True, slots=True)
class LaneLimits:
    """Bounds of the read-ahead; README's configuration table documents each."""

    max_in_flight: int = 256
    tenant_max_in_flight: int = 32
    tenant_max_queued: int = 2000
    max_queued: int = 20_000
    fallback_after: float = 60.0
    first_backoff: float = 0.5
    max_backoff: float = 10.0


@dataclass(slots=True)
class _Item:
    event: BillingEvent
    handle: Any
    result: Any = _PENDING


@dataclass(slots=True)
class _Tenant:
    slots: asyncio.Semaphore
    queued: int = 0
    failing_since: float | None = None  # monotonic; cleared by the next good answer
    degraded: bool = False
    partitions: set[int] = field(default_factory=set)


class Lanes:
    """Per-customer lanes over concurrent, bounded Stripe reads."""

    def __init__(
        self,
        fetch: Fetch | None,
        limits: LaneLimits = LaneLimits(),
        *,
        pressure: Callable[[int, bool], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._limits = limits
        self._pressure = pressure
        self._global = asyncio.Semaphore(limits.max_in_flight)
        self._lanes: dict[bytes, deque[_Item]] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._ready_keys: dict[bytes, None] = {}  # ordered set
        self._ready_count = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._queued = 0
        self._paused: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self.admitted = 0  # events ever admitted: the applier watches it grow
        self.fallbacks = 0  # events applied with their snapshot because Stripe stayed down

    # -- admission ---------------------------------------------------------------------

    async def admit(self, event: BillingEvent, handle: Any) -> None:
        """Queues `event` in its customer's lane; waits only when the read-ahead is full."""
        while self._queued >= self._limits.max_queued:
            self._room.clear()
            await self._room.wait()
        tenant = self._tenant(event.tenant.id)
        item = _Item(event, handle)
        lane = self._lanes.get(event.key)
        if lane is None:
            lane = self._lanes[event.key] = deque()
        lane.append(item)
        self.admitted += 1
        self._queued += 1
        tenant.queued += 1
        tenant.partitions.add(event.record.partition)
        if tenant.queued > self._limits.tenant_max_queued:
            self._set_paused(event.record.partition, True)
        if self._fetch is None or event.target is None or event.tenant.stripe_api_key is None:
            # Nothing to read (or no key to read with): the event's snapshot is all there is.
            self._resolve(item, None)
        else:
            task = asyncio.create_task(self._read(item, tenant), name="stripe-read")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _tenant(self, tenant_id: str) -> _Tenant:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = _Tenant(asyncio.Semaphore(self._limits.tenant_max_in_flight))
            self._tenants[tenant_id] = tenant
        return tenant

    # -- reads -------------------------------------------------------------------------

    async def _read(self, item: _Item, tenant: _Tenant) -> None:
        assert self._fetch is not None
        limits = self._limits
        result: FetchResult = None
        try:
            async with tenant.slots:
                deadline = time.monotonic() + limits.fallback_after
                delay = limits.first_backoff
                while True:
                    async with self._global:
                        self._in_flight += 1
                        try:
                            result = await self._fetch(item.event)
                        finally:
                            self._in_flight -= 1
                    if result is not None:
                        tenant.failing_since = None
                        tenant.degraded = False
                        break
                    now = time.monotonic()
                    if tenant.failing_since is None:
                        tenant.failing_since = now
                    if tenant.degraded or now + delay > deadline:
                        tenant.degraded = True
                        self.fallbacks += 1
                        break
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, limits.max_backoff)
        except Exception:
            log.exception("stripe read raised; applying the event's snapshot")
            result = None
        self._resolve(item, result)

    def _resolve(self, item: _Item, result: FetchResult) -> None:
        item.result = result
        lane = self._lanes.get(item.event.key)
        self._ready_count += 1
        if lane is not None and lane[0] is item:
            self._ready_keys[item.event.key] = None
            self._ready.set()

    # -- handing out -------------------------------------------------------------------

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def wake(self) -> None:
        """Lets `wait_ready` return: the adapter has other work for the applier."""
        self._ready.set()

    def take_ready(self) -> list[tuple[BillingEvent, FetchResult, Any]]:
        """Every event whose answer is in and whose customer's earlier events are out,
        grouped by customer, each customer's in partition order."""
        self._ready.clear()
        out: list[tuple[BillingEvent, FetchResult, Any]] = []
        keys, self._ready_keys = self._ready_keys, {}
        for key in keys:
            lane = self._lanes.get(key)
            while lane and lane[0].result is not _PENDING:
                item = lane.popleft()
                out.append((item.event, item.result, item.handle))
                self._ready_count -= 1
                self._done(item)
            if lane is not None and not lane:
                del self._lanes[key]
        return out

    def _done(self, item: _Item) -> None:
        self._queued -= 1
        tenant = self._tenants[item.event.tenant.id]
        tenant.queued -= 1
        if self._queued < self._limits.max_queued:
            self._room.set()
        if self._paused and tenant.queued <= self._limits.tenant_max_queued // 2:
            for partition in tenant.partitions & self._paused:
                if not any(
                    t.queued > self._limits.tenant_max_queued // 2
                    for t in self._tenants.values()
                    if partition in t.partitions
                ):
                    self._set_paused(partition, False)
        if tenant.queued == 0 and not tenant.degraded and tenant.failing_since is None:
            del self._tenants[item.event.tenant.id]

    def _set_paused(self, partition: int, paused: bool) -> None:
        if paused == (partition in self._paused):
            return
        if paused:
            self._paused.add(partition)
        else:
            self._paused.discard(partition)
        log.warning(
            "partition paused: a tenant's lane is full" if paused else "partition resumed",
            extra={"partition": partition},
        )
        if self._pressure is not None:
            self._pressure(partition, paused)

    # -- what operators see ------------------------------------------------------------

    @property
    def ready_count(self) -> int:
        """Events whose Stripe answer is in (some may still wait for an earlier one)."""
        return self._ready_count

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def in_flight(self) -> int:
        """Stripe reads running now (not those waiting for a slot or a retry)."""
        return self._in_flight

    @property
    def paused_partitions(self) -> frozenset[int]:
        return frozenset(self._paused)

    def tenants_by_state(self) -> dict[str, list[str]]:
        """Tenant ids whose Stripe reads are `retrying` or `degraded` (snapshot fallback)."""
        out: dict[str, list[str]] = {"retrying": [], "degraded": []}
        for tenant_id, tenant in self._tenants.items():
            if tenant.degraded:
                out["degraded"].append(tenant_id)
            elif tenant.failing_since is not None:
                out["retrying"].append(tenant_id)
        return out

    async def close(self) -> None:
        """Cancels the reads still running (their events were never acknowledged)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
