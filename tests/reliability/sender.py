"""A webhook client that behaves like Stripe: signs each attempt afresh and retries any
non-2xx answer (or a refused connection) with exponential backoff, until it gets a 2xx.

It records what happened to every delivery, so a test can say which events the ingress
acknowledged (those must all be in `stripe.events`) and what it answered meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from tests.reliability.model import Delivery


def stripe_signature(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """`t=…,v1=…` computed here, independently of the ingress's own code."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


@dataclass
class SendReport:
    """What the ingress answered, per status and per delivery."""

    statuses: Counter[int] = field(default_factory=Counter)
    accepted: set[tuple[str, str]] = field(default_factory=set)
    unavailable_with_retry_after: int = 0
    unavailable_without_retry_after: int = 0
    given_up: list[Delivery] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    attempts: int = 0


class StripeLikeSender:
    """Sends deliveries at `rate` per second with at most `concurrency` in flight."""

    def __init__(
        self,
        base_url: str,
        secrets: dict[str, str],
        *,
        concurrency: int = 16,
        backoff: tuple[float, float] = (0.25, 3.0),
        give_up_after: float = 180.0,
        timeout: float = 10.0,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._secrets = secrets
        self._limit = asyncio.Semaphore(concurrency)
        self._backoff = backoff
        self._give_up_after = give_up_after
        self._timeout = timeout
        self.report = SendReport()

    async def send_all(self, deliveries: Sequence[Delivery], rate: float) -> SendReport:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks: list[asyncio.Task[None]] = []
            started = time.monotonic()
            for n, delivery in enumerate(deliveries):
                due = started + n / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._limit.acquire()
                tasks.append(asyncio.create_task(self._deliver(session, delivery)))
            await asyncio.gather(*tasks)
        return self.report

    async def _deliver(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        try:
            deadline = time.monotonic() + self._give_up_after
            url = f"{self._base}/v1/webhooks/stripe/{delivery.tenant_id}"
            secret = self._secrets[delivery.tenant_id]
            attempt = 0
            while True:
                status, retry_after, took = await self._attempt(session, url, delivery, secret)
                self.report.attempts += 1
                self.report.statuses[status] += 1
                if 200 <= status < 300:
                    self.report.accepted.add((delivery.tenant_id, delivery.event_id))
                    self.report.latencies.append(took)
                    return
                if status == 503:
                    if retry_after is not None:
                        self.report.unavailable_with_retry_after += 1
                    else:
                        self.report.unavailable_without_retry_after += 1
                if time.monotonic() > deadline:
                    self.report.given_up.append(delivery)
                    return
                low, high = self._backoff
                wait = min(high, low * 2**attempt) * (0.5 + random.random() / 2)
                if retry_after is not None:
                    wait = min(wait, retry_after)
                attempt += 1
                await asyncio.sleep(wait)
        finally:
            self._limit.release()

    async def _attempt(
        self, session: aiohttp.ClientSession, url: str, delivery: Delivery, secret: str
    ) -> tuple[int, float | None, float]:
        headers = {
            "Stripe-Signature": stripe_signature(delivery.body, secret),
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }
        sent = time.perf_counter()
        try:
            async with session.post(url, data=delivery.body, headers=headers) as resp:
                await resp.read()
                retry = resp.headers.get("Retry-After")
                return resp.status, float(retry) if retry else None, time.perf_counter() - sent
        except (aiohttp.ClientError, TimeoutError):
            return 0, None, time.perf_counter() - sent


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
