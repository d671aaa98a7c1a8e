"""Reads current Stripe objects for the billing agent: rate-limited, cached, coalesced.

An event is a signal, not the truth: Stripe delivers out of order, so the agent fetches
the object's current state. Each tenant gets its own `StripeClient` (its own key, explicit
`max_network_retries`), each Stripe account a token bucket below Stripe's limit, and each
object a cache entry for `cache_ttl` seconds; concurrent fetches of one object share one
request. A fetch answers one of three things: the object (`Fetched`), that it does not
exist in the tenant's account (`NotFound`, authoritative: Stripe answered 404), or None
when Stripe could not be reached (timeout, 5xx, 429, a key it refused); the billing
pipeline retries that and falls back to the event's snapshot only after a deadline.

The timeout bounds the HTTP exchange, not the wait for the account's bucket: a burst of
one tenant queues at its bucket, and that wait is the pipeline's to bound (per-tenant
in-flight cap), not a reason to give up on Stripe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import stripe
from aiolimiter import AsyncLimiter

from streams.processing.billing import Fetched, FetchResult, NotFound
from streams.stripe_clients import StripeClients
from tables.tenant import Tenant

__all__ = ["DEFAULT_RATES", "FetchResult", "Fetched", "NotFound", "StripeReader"]

log = logging.getLogger("quotaflow.stripe")

# Below Stripe's per-account limits (live 100/s, test 25/s) even with a full bucket's burst.
DEFAULT_RATES = {"live": 80.0, "test": 20.0}


_NOT_FOUND = object()


class StripeReader:
    """Fetches subscriptions and customers for many tenants without blocking the loop."""

    def __init__(
        self,
        *,
        api_base: str | None = None,
        timeout: float = 5.0,
        cache_ttl: float = 300.0,
        max_network_retries: int = 2,
        rates: Mapping[str, float] = DEFAULT_RATES,
        cache_size: int = 100_000,
        http_client: stripe.AIOHTTPClient | None = None,
    ) -> None:
        self._timeout = timeout
        self._cache_ttl = cache_ttl
        self._rates = dict(rates)
        self._cache_size = cache_size
        self._clients = StripeClients(
            api_base=api_base, max_network_retries=max_network_retries, http_client=http_client
        )
        self._limiters: dict[str, AsyncLimiter] = {}
        # (wall-clock fetch time, object): compared with events' received-at times.
        self._cache: dict[tuple[str, str], Fetched] = {}
        self._inflight: dict[tuple[str, str], tuple[float, asyncio.Future[FetchResult]]] = {}

    def _limiter(self, tenant: Tenant) -> AsyncLimiter:
        account = tenant.stripe_account or tenant.id
        limiter = self._limiters.get(account)
        if limiter is None:
            rate = self._rates.get(tenant.mode, 20.0)
            # A quarter-second bucket: any one-second window holds at most 1.25 x rate
            # requests, which the defaults keep under Stripe's own per-account limit.
            limiter = AsyncLimiter(max_rate=max(rate / 4, 1.0), time_period=0.25)
            self._limiters[account] = limiter
        return limiter

    async def fetch(
        self, tenant: Tenant, kind: str, object_id: str, *, not_before: float = 0.0
    ) -> FetchResult:
        """The current object and when it was fetched; `NotFound` on Stripe's 404; None
        when Stripe cannot be reached.

        A cached copy serves only if it was fetched at or after `not_before` (the time the
        event was received): an older copy may predate the change the event signals.
        """
        key = (tenant.id, object_id)
        hit = self._cache.get(key)
        now = time.time()
        if hit is not None and now - hit.at < self._cache_ttl and hit.at >= not_before:
            return hit
        pending = self._inflight.get(key)
        if pending is not None and pending[0] >= not_before:
            return await asyncio.shield(pending[1])
        future: asyncio.Future[FetchResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = (now, future)
        try:
            obj = await self._fetch(tenant, kind, object_id)
            result: FetchResult = (
                NotFound(now) if obj is _NOT_FOUND else None if obj is None else Fetched(obj, now)
            )
            if isinstance(result, Fetched):
                if len(self._cache) >= self._cache_size:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = result
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            if self._inflight.get(key, (0.0, None))[1] is future:
                del self._inflight[key]

    def invalidate(self, tenant_id: str, object_id: str) -> None:
        self._cache.pop((tenant_id, object_id), None)

    async def _fetch(self, tenant: Tenant, kind: str, object_id: str) -> Any:
        client = self._clients.get(tenant)
        if client is None or kind not in ("subscription", "customer"):
            return None
        try:
            async with self._limiter(tenant):
                async with asyncio.timeout(self._timeout):
                    if kind == "subscription":
                        obj: Any = await client.v1.subscriptions.retrieve_async(object_id)
                    else:
                        obj = await client.v1.customers.retrieve_async(object_id)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return _NOT_FOUND
            log.warning(
                "stripe fetch refused",
                extra={"tenant_id": tenant.id, "object": kind, "status": exc.http_status},
            )
            return None
        except (stripe.StripeError, TimeoutError) as exc:
            log.warning(
                "stripe fetch failed",
                extra={"tenant_id": tenant.id, "object": kind, "error": type(exc).__name__},
            )
            return None
        result: dict[str, Any] = obj.to_dict()
        return result

    async def close(self) -> None:
        await self._clients.close()
