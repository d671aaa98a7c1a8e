"""The Stripe reader: real `stripe` library calls, checked by stripe-mock for shape.

A small counting proxy sits between the reader and stripe-mock, so the tests can see how
many requests really reached "Stripe" (coalescing, caching, the per-account bucket).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from streams.stripe_client import Fetched, StripeReader
from tables.tenant import Tenant, WebhookSecret

pytestmark = pytest.mark.stripe


class CountingProxy:
    """Forwards to stripe-mock and records the time of each request it forwards."""

    def __init__(self, upstream: str, delay: float = 0.0, fail: bool = False) -> None:
        self.upstream = upstream
        self.delay = delay
        self.fail = fail
        self.hits: list[tuple[float, str]] = []
        self.authorizations: set[str] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append((time.monotonic(), request.path))
        self.authorizations.add(request.headers.get("Authorization", ""))
        if self.fail:
            return web.json_response(
                {"error": {"type": "api_error", "message": "down"}},
                status=500,
                headers={"Stripe-Should-Retry": "false"},
            )
        await asyncio.sleep(self.delay)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                self.upstream + request.path_qs, headers={"Authorization": "Bearer sk_test_123"}
            ) as upstream,
        ):
            return web.Response(
                body=await upstream.read(),
                status=upstream.status,
                content_type="application/json",
            )


@pytest.fixture
async def proxy(stripe_mock: str) -> AsyncIterator[tuple[CountingProxy, str]]:
    counting = CountingProxy(stripe_mock)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", counting.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield counting, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _tenant(tenant_id: str = "acme", key: str = "sk_test_acme") -> Tenant:
    return Tenant(
        id=tenant_id,
        webhook_secrets=(WebhookSecret(id="s1", secret=SecretStr("whsec_x")),),
        stripe_api_key=SecretStr(key),
        regions=("eu",),
    )


async def test_fetches_subscription_and_customer_through_the_stripe_library(
    proxy: tuple[CountingProxy, str],
) -> None:
    counting, base = proxy
    reader = StripeReader(api_base=base, max_network_retries=0)
    try:
        sub = await reader.fetch(_tenant(), "subscription", "sub_123")
        cus = await reader.fetch(_tenant(), "customer", "cus_123")
    finally:
        await reader.close()
    assert isinstance(sub, Fetched)
    assert sub.object["object"] == "subscription"
    assert isinstance(sub.object["items"]["data"], list)
    assert isinstance(cus, Fetched)
    assert cus.object["object"] == "customer"
    assert [path for _, path in counting.hits] == [
        "/v1/subscriptions/sub_123",
        "/v1/customers/cus_123",
    ]
    assert counting.authorizations == {"Bearer sk_test_acme"}


async def test_concurrent_fetches_of_one_object_share_one_request(
    proxy: tuple[CountingProxy, str],
) -> None:
    counting, base = proxy
    counting.delay = 0.2
    reader = StripeReader(api_base=base, max_network_retries=0)
    try:
        results = await asyncio.gather(
            *(reader.fetch(_tenant(), "subscription", "sub_123") for _ in range(10))
        )
    finally:
        await reader.close()
    assert len(counting.hits) == 1
    assert all(r is not None and r.object["id"] == results[0].object["id"] for r in results)  # type: ignore[union-attr]


async def test_cache_serves_only_copies_fetched_after_the_event_arrived(
    proxy: tuple[CountingProxy, str],
) -> None:
    counting, base = proxy
    reader = StripeReader(api_base=base, max_network_retries=0)
    try:
        first = await reader.fetch(_tenant(), "subscription", "sub_123", not_before=0.0)
        assert first is not None
        again = await reader.fetch(_tenant(), "subscription", "sub_123", not_before=first.at)
        assert len(counting.hits) == 1  # fetched after that event: the cached copy serves
        newer = await reader.fetch(
            _tenant(), "subscription", "sub_123", not_before=first.at + 0.001
        )
        assert len(counting.hits) == 2  # an event newer than the copy forces a new fetch
        assert again is first
        assert newer is not None
        assert newer.at >= first.at
    finally:
        await reader.close()


async def test_the_per_account_bucket_bounds_the_request_rate(
    proxy: tuple[CountingProxy, str],
) -> None:
    counting, base = proxy
    reader = StripeReader(api_base=base, max_network_retries=0, rates={"test": 10.0})
    try:
        await asyncio.gather(*(reader.fetch(_tenant(), "customer", f"cus_{n}") for n in range(25)))
    finally:
        await reader.close()
    times = sorted(t for t, _ in counting.hits)
    assert len(times) == 25
    # No one-second window held more than the rate plus a quarter-second burst.
    busiest = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    assert busiest <= 12


async def test_stripe_unreachable_gives_none_and_the_key_never_leaks(
    proxy: tuple[CountingProxy, str], caplog: pytest.LogCaptureFixture
) -> None:
    counting, base = proxy
    counting.fail = True
    reader = StripeReader(api_base=base, max_network_retries=1)
    try:
        assert await reader.fetch(_tenant(key="sk_test_secretvalue"), "customer", "cus_1") is None
    finally:
        await reader.close()
    assert "sk_test_secretvalue" not in caplog.text
    # Stripe-Should-Retry: false is honoured: no retry despite max_network_retries=1.
    assert len(counting.hits) == 1


async def test_tenant_without_api_key_is_never_fetched(proxy: tuple[CountingProxy, str]) -> None:
    counting, base = proxy
    tenant = _tenant().model_copy(update={"stripe_api_key": None})
    reader = StripeReader(api_base=base)
    try:
        assert await reader.fetch(tenant, "subscription", "sub_1") is None
    finally:
        await reader.close()
    assert counting.hits == []
