"""Sends one Stripe Billing meter event, rate-limited per Stripe account, retried safely.

`POST /v1/billing/meter_events` through the official library
(`client.v1.billing.meter_events.create_async`), one `StripeClient` per tenant key with
`max_network_retries=0`: the retry policy lives here, because it must take a token from
the account's bucket on every attempt (a library retry would not) and read
`Stripe-Should-Retry`.

Every attempt carries the job's deterministic `identifier` as both the meter event's
`identifier` (Stripe deduplicates meter events on it for at least 24 h) and the request's
`Idempotency-Key` (a retry of a request that did reach Stripe gets the first answer back).
So a retry, a restart or a replay re-sends the same identifier and is billed once.

Retry rule: 401 and 403 (the tenant's key revoked or without the permission) end the call
as `unauthorized`: not permanent for the job, which the caller parks until the key is
replaced (streams/meter_reporter.py). Otherwise `Stripe-Should-Retry: true|false` decides
when present; else 429, 409, 5xx, timeouts and connection errors are retried, everything
else is permanent (`failed`). Backoff is
exponential with full jitter, capped at `max_backoff`; retries never stop (usage is money),
but a caller can bound them with `max_attempts`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import stripe
from aiolimiter import AsyncLimiter

from streams.stripe_clients import StripeClients
from tables.tenant import Tenant

__all__ = ["MeterClient", "MeterJob", "SendResult"]

log = logging.getLogger("quotaflow.meter")

SendResult = Literal["sent", "duplicate", "failed", "no_api_key", "unauthorized"]


@dataclass(frozen=True, slots=True)
class MeterJob:
    """One meter event to report: written by the usage agent to `meter.jobs`."""

    tenant_id: str
    stripe_customer_id: str
    event_name: str
    value: int
    identifier: str
    timestamp: int
    batch_id: str

    @property
    def key(self) -> tuple[str, str, str]:
        """At most one call in flight per (customer, meter) within a tenant."""
        return (self.tenant_id, self.stripe_customer_id, self.event_name)

    def params(self) -> dict[str, Any]:
        return {
            "event_name": self.event_name,
            "identifier": self.identifier,
            "timestamp": self.timestamp,
            "payload": {"stripe_customer_id": self.stripe_customer_id, "value": str(self.value)},
        }


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def retriable(exc: stripe.StripeError) -> bool:
    """Stripe-Should-Retry first; else 409, 429, 5xx and no answer at all."""
    should = _header(exc.headers, "Stripe-Should-Retry")
    if should is not None:
        return should.strip().lower() == "true"
    status = exc.http_status
    return status is None or status in (409, 429) or status >= 500


def _already_recorded(exc: stripe.StripeError) -> bool:
    """A meter event with this identifier already exists (a re-send after a lost answer).

    Stripe's exact wording is unconfirmed: matched loosely on the message.
    """
    message = str(exc.user_message or exc).lower()
    return exc.http_status == 400 and "identifier" in message and "exist" in message


class MeterClient:
    """Per-tenant Stripe clients and per-account token buckets for meter events."""

    def __init__(
        self,
        *,
        api_base: str | None = None,
        rates: Mapping[str, float] | None = None,
        timeout: float = 10.0,
        base_backoff: float = 0.25,
        max_backoff: float = 30.0,
        max_attempts: int | None = None,
    ) -> None:
        self._rates = dict(rates or {"live": 80.0, "test": 20.0})
        self._timeout = timeout
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._max_attempts = max_attempts
        self._clients = StripeClients(api_base=api_base, max_network_retries=0)
        self._limiters: dict[str, AsyncLimiter] = {}
        self.attempts = 0
        self.rate_limited = 0

    def limiter(self, tenant: Tenant) -> AsyncLimiter:
        """The account's bucket: its rate per second, bursts of at most 1/20 s of it."""
        account = tenant.stripe_account or tenant.id
        limiter = self._limiters.get(account)
        if limiter is None:
            rate = self._rates.get(tenant.mode, 20.0)
            burst = max(1.0, rate / 20.0)
            limiter = self._limiters[account] = AsyncLimiter(burst, burst / rate)
        return limiter

    async def send(self, tenant: Tenant, job: MeterJob) -> SendResult:
        """Reports `job` once in effect; returns how it ended. Never raises Stripe errors."""
        client = self._clients.get(tenant)
        if client is None:
            return "no_api_key"
        limiter = self.limiter(tenant)
        attempt = 0
        while True:
            attempt += 1
            async with limiter:
                self.attempts += 1
                try:
                    async with asyncio.timeout(self._timeout):
                        await client.v1.billing.meter_events.create_async(
                            params=job.params(),  # type: ignore[arg-type]
                            options={"idempotency_key": job.identifier},
                        )
                    return "sent"
                except stripe.StripeError as exc:
                    if exc.http_status == 429:
                        self.rate_limited += 1
                    if _already_recorded(exc):
                        return "duplicate"
                    if exc.http_status in (401, 403):
                        log.warning(
                            "stripe refused the tenant's key",
                            extra={"tenant_id": job.tenant_id, "status": exc.http_status},
                        )
                        return "unauthorized"
                    if not retriable(exc):
                        log.error(
                            "meter event refused",
                            extra={
                                "tenant_id": job.tenant_id,
                                "identifier": job.identifier,
                                "status": exc.http_status,
                                "code": exc.code,
                            },
                        )
                        return "failed"
                except TimeoutError:
                    pass
            if self._max_attempts is not None and attempt >= self._max_attempts:
                return "failed"
            ceiling = min(self._max_backoff, self._base_backoff * 2 ** min(attempt - 1, 16))
            await asyncio.sleep(random.uniform(0, ceiling))

    async def close(self) -> None:
        await self._clients.close()
