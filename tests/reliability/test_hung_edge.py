"""A hung edge node (accepts TCP connections, reads, never answers) beside a healthy one:
the healthy node keeps receiving every update. The delivery latency to the healthy node
is measured with and without the hung peer (figures only; RELIABILITY.md quotes them).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from quotaflow.commands.localkafka import free_port
from quotaflow.testing.harness import eventually
from tests.processes import EDGE_AUTH
from tests.reliability.conftest import StackFactory
from tests.reliability.model import PERIOD, WINDOW_START, Delivery, build
from tests.reliability.sender import StripeLikeSender, percentile
from tests.reliability.stack import Stack
from tests.tables.factories import BASIC, event, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

PROBES = 40


class HungNode:
    """Accepts connections and reads whatever comes, answering nothing, ever."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while await reader.read(65536):
            pass

    async def __aenter__(self) -> HungNode:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _probe_latencies(stack: Stack, secret: str, first: int) -> list[float]:
    """Seconds from sending a webhook to its quota being visible at the healthy edge."""
    port = stack.edge_ports["eu"][0]
    sender = StripeLikeSender(stack.ingress_url, {"acme": secret}, concurrency=1)
    out: list[float] = []
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout, headers=EDGE_AUTH) as http:
        for i in range(first, first + PROBES):
            sub = subscription("sub_probe", "cus_probe", "active", [(BASIC, i)], period=PERIOD)
            body = event(
                "customer.subscription.updated", sub, created=WINDOW_START + i, event_id=f"evt_p{i}"
            )
            stack.feed.change("acme", sub)  # Stripe's subscription changes, then the event
            sent = time.perf_counter()
            await sender.send_all([Delivery("acme", str(body["id"]), orjson.dumps(body))], rate=1e6)
            url = f"http://127.0.0.1:{port}/v1/quotas/acme/cus_probe"
            while True:
                async with http.get(url) as resp:
                    doc = orjson.loads(await resp.read()) if resp.status == 200 else {}
                if doc.get("limit") == 1000 * i:
                    out.append(time.perf_counter() - sent)
                    break
                if time.perf_counter() - sent > 30:
                    raise AssertionError(f"probe {i} not delivered to the healthy edge in 30s")
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.05)
    return out


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 0.5) * 1000, 1),
        "p99_ms": round(percentile(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


async def test_a_hung_node_leaves_the_healthy_node_delivery_working(
    make_stack: StackFactory, figures: dict[str, Any]
) -> None:
    workload = build(["acme"], 10, seed=23)
    stack = make_stack(workload, {"eu": 1})
    await stack.start_all()
    secret = workload.secrets["acme"]
    await StripeLikeSender(stack.ingress_url, workload.secrets).send_all(
        workload.deliveries(), rate=200
    )
    await stack.converge()
    alone = await _probe_latencies(stack, secret, 1)

    async with HungNode() as hung:
        await asyncio.to_thread(stack.procs["push-eu"].stop)
        stack.extra_nodes["eu"] = [f"http://127.0.0.1:{hung.port}"]
        await asyncio.to_thread(stack.start_pusher, "eu")
        # The pusher is up and its first push to the hung node hangs.
        await eventually(
            lambda: hung.connections > 0, timeout=60, what="the pusher tries the hung node"
        )
        beside_hung = await _probe_latencies(stack, secret, 1 + PROBES)
        assert hung.connections > 0, "the pusher never tried the hung node"
        await stack.converge()
        await asyncio.to_thread(stack.procs["push-eu"].stop)  # before the hung node goes

    figures.update(
        probes=PROBES,
        healthy_node_alone=_summary(alone),
        healthy_node_beside_hung=_summary(beside_hung),
        hung_connections=hung.connections,
    )
