"""One endpoint's ordered queue: deliver the head, retry it with backoff, never overtake it.

A notification is delivered only after every earlier one of the same endpoint (order per
endpoint, as derived). A failed attempt waits `delay(failures)` (exponential, from
`retry_base` doubling up to `retry_max_delay`, half of it random: equal jitter, so a
fleet of notifiers does not retry in step) or the endpoint's `Retry-After`, whichever is
longer. Once the endpoint has failed continuously for `give_up_after` seconds (or answers
410 Gone), it is disabled: what it holds, and whatever comes for it until an operator
enables it again, goes to the dead letters (`quotaflow notifications resend`).

Attempts draw from the tenant's limiter (shared by the tenant's endpoints) and each
endpoint has its own task, so a slow or dead endpoint holds back only its own queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

from streams.notifier.delivery import Attempt, Deliverer
from streams.notifier.metrics import NotifierMetrics
from tables.tenant import NotificationEndpoint

__all__ = ["EndpointQueue", "Pending", "RetryPolicy"]

log = logging.getLogger("quotaflow.notifier")


@dataclass(slots=True)
class Pending:
    """A notification owed to one endpoint, with where it came from in Kafka."""

    notification_id: str
    body: bytes
    at: float  # the transition, Unix seconds (the lag is measured from it)
    tp: object
    offset: int
    headers: tuple[tuple[str, bytes], ...] = ()
    resend: bool = False  # an operator's resend: delivered even if delivered before
    abandoned: bool = field(default=False)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float
    max_delay: float
    give_up_after: float

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        ceiling = min(self.max_delay, self.base * 2 ** min(failures - 1, 40))
        jittered = ceiling / 2 + random.uniform(0, ceiling / 2)
        return float(max(jittered, retry_after or 0.0))


Settle = Callable[[Pending], None]
GiveUp = Callable[[Sequence[Pending], str], Awaitable[None]]
Disable = Callable[[str], Awaitable[None]]


class EndpointQueue:
    """`put` notifications; `run` delivers them in order until cancelled."""

    def __init__(
        self,
        tenant_id: str,
        endpoint_id: str,
        *,
        lookup: Callable[[], NotificationEndpoint | None],
        deliverer: Deliverer,
        limiter: AsyncLimiter,
        policy: RetryPolicy,
        delivered: Settle,
        seen: Callable[[Pending], bool],
        give_up: GiveUp,
        disable: Disable,
        metrics: NotifierMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenant_id = tenant_id
        self.endpoint_id = endpoint_id
        self._lookup = lookup
        self._deliverer = deliverer
        self._limiter = limiter
        self._policy = policy
        self._delivered = delivered
        self._seen = seen
        self._give_up = give_up
        self._disable = disable
        self._clock = clock
        self._metrics = metrics
        self.items: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self.failures = 0
        self.failing_since: float | None = None
        self.disabled = False

    def __len__(self) -> int:
        return len(self.items)

    def put(self, item: Pending) -> None:
        self.items.append(item)
        self._wake.set()

    def enable(self) -> None:
        """An operator enabled the endpoint again: start afresh."""
        self.disabled = False
        self.failures = 0
        self.failing_since = None
        self._wake.set()

    def abandon(self, tp: object) -> None:
        """Items of a revoked partition: another notifier delivers them from the commit."""
        kept = deque(i for i in self.items if i.tp != tp)
        for item in self.items:
            if item.tp == tp:
                item.abandoned = True
        self.items = kept

    async def run(self) -> None:
        while True:
            if not self.items:
                self._wake.clear()
                await self._wake.wait()
                continue
            endpoint = self._lookup()
            if endpoint is None:
                await self._flush("endpoint_removed")
                continue
            if self.disabled or not endpoint.enabled:
                await self._flush("endpoint_disabled")
                continue
            head = self.items[0]
            if not head.resend and self._seen(head):
                # The same id came twice (a worker re-emitted it): delivered once is enough.
                self.items.popleft()
                if not head.abandoned:
                    self._delivered(head)
                continue
            await self._limiter.acquire()
            attempt = await self._deliverer.post(
                endpoint.url, endpoint.secret.get_secret_value(), head.notification_id, head.body
            )
            self._metrics.attempts.labels(outcome=attempt.outcome).inc()
            if attempt.delivered:
                if self.items and self.items[0] is head:
                    self.items.popleft()
                self._metrics.lag.observe(max(self._clock() - head.at, 0.0))
                self.failures, self.failing_since = 0, None
                if not head.abandoned:
                    self._delivered(head)
                continue
            await self._failed(attempt)

    async def _failed(self, attempt: Attempt) -> None:
        now = self._clock()
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
        log.warning(
            "notification delivery failed",
            extra={
                "tenant": self.tenant_id,
                "endpoint": self.endpoint_id,
                "outcome": attempt.outcome,
                "detail": attempt.detail,
                "failures": self.failures,
            },
        )
        reason = None
        if attempt.outcome == "gone":
            reason = "gone"
        elif now - self.failing_since >= self._policy.give_up_after:
            reason = "failing"
        if reason is not None:
            self.disabled = True
            await self._disable(reason)
            await self._flush("endpoint_disabled")
            return
        delay = self._policy.delay(self.failures, attempt.retry_after)
        # Never sleep past the give-up moment: the endpoint is disabled on time.
        delay = min(delay, max(self.failing_since + self._policy.give_up_after - now, 0.0))
        self._wake.clear()
        try:
            async with asyncio.timeout(delay):
                await self._wait_enabled()
        except TimeoutError:
            pass

    async def _wait_enabled(self) -> None:
        # Only `enable` (or new work after a disable) cuts a backoff short.
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.disabled and self.failures == 0:
                return

    async def _flush(self, reason: str) -> None:
        items = [i for i in self.items if not i.abandoned]
        self.items.clear()
        if items:
            await self._give_up(items, reason)
