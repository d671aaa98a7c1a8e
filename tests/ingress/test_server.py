"""`serve` runs the ingress until its stop event, then shuts down cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest

from ingress.server import serve
from quotaflow.commands.localkafka import free_port
from quotaflow.registry import StaticTenantRegistry
from quotaflow.settings import Settings
from tests.ingress.conftest import create_topic, event_body, make_tenant, read_topic, signed

pytestmark = pytest.mark.kafka


async def test_serve_answers_until_stopped_then_releases_the_port(
    settings_factory: Callable[..., Settings],
) -> None:
    port = free_port()
    settings = settings_factory(ingress_port=port)
    await create_topic(settings.kafka_bootstrap, settings.topics.stripe_events, 2)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, StaticTenantRegistry([make_tenant("acme")]), stop))
    base = f"http://127.0.0.1:{port}"
    body = event_body("evt_served")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with asyncio.timeout(20):
            while True:
                try:
                    async with session.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        headers = signed(body, "whsec_acme_secret")
        async with session.post(f"{base}/v1/webhooks/stripe/acme", data=body, headers=headers) as r:
            assert r.status == 200
    stop.set()
    async with asyncio.timeout(20):
        await task
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    [record] = await read_topic(settings.kafka_bootstrap, settings.topics.stripe_events)
    assert record.value == body


async def test_a_connection_that_never_finishes_its_head_is_closed(
    settings_factory: Callable[..., Settings],
) -> None:
    port = free_port()
    settings = settings_factory(ingress_port=port, ingress_header_timeout=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, StaticTenantRegistry([make_tenant("acme")]), stop))
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        writer.write(b"POST /v1/webhooks/stripe/acme HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        began = asyncio.get_running_loop().time()
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # closed by the server, no answer
        assert asyncio.get_running_loop().time() - began < 5
        writer.close()
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task
