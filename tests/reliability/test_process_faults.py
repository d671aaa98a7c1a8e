"""Processes die under load: the ingress is restarted, the pusher is SIGKILLed and
restarted, an edge node is SIGKILLed for 30 s and restarted. Nothing acknowledged is
lost, duplicates are harmless, and every edge ends with the reference quotas, version
for version the same as its peers.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import pytest

from tests.reliability.conftest import StackFactory
from tests.reliability.model import build
from tests.reliability.sender import StripeLikeSender
from tests.reliability.stack import event_ids, topic_records


async def _ready_after(port: int, within: float = 60.0) -> float:
    """Seconds until a restarted edge answers /readyz 200 (its snapshot is in)."""
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() - started < within:
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.02)
    raise AssertionError(f"edge on {port} not ready within {within}s")


pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

EDGE_DOWN = 30.0


async def test_restarts_and_kills_lose_nothing_and_edges_converge(
    make_stack: StackFactory, figures: dict[str, Any]
) -> None:
    workload = build(
        ["acme", "globex", "initech"],
        25,
        seed=19,
        tenant_regions={"acme": ("eu",), "globex": ("eu", "us"), "initech": ("us",)},
    )
    stack = make_stack(workload, {"eu": 2, "us": 1})
    await stack.start_all()
    deliveries = workload.deliveries(copies=2, rng=random.Random(2))
    rate = len(deliveries) / 45.0
    sender = StripeLikeSender(stack.ingress_url, workload.secrets, concurrency=16)
    load = asyncio.create_task(sender.send_all(deliveries, rate=rate))
    t0 = time.monotonic()
    timeline: list[tuple[float, str]] = []

    async def at(second: float, what: str) -> None:
        await asyncio.sleep(max(0.0, t0 + second - time.monotonic()))
        timeline.append((round(time.monotonic() - t0, 1), what))

    await at(3, "SIGKILL edge eu-1")
    # Process control blocks: it runs in threads so the load keeps flowing meanwhile.
    await asyncio.to_thread(stack.procs["edge-eu-1"].kill)
    await at(8, "restart ingress (SIGTERM, start)")
    await asyncio.to_thread(stack.procs["ingress"].stop)
    await asyncio.to_thread(stack.start_ingress)
    await at(15, "SIGKILL pusher eu")
    await asyncio.to_thread(stack.procs["push-eu"].kill)
    await at(17, "start pusher eu")
    await asyncio.to_thread(stack.start_pusher, "eu")
    await at(3 + EDGE_DOWN, "start edge eu-1")
    await asyncio.to_thread(stack.start_edge, "eu", 1)
    ready_after = await _ready_after(stack.edge_ports["eu"][1])
    report = await load
    timeline.append((round(time.monotonic() - t0, 1), "load done"))

    assert not report.given_up
    s = stack.settings
    in_topic = event_ids(await topic_records(s.kafka_bootstrap, s.topics.stripe_events))
    assert report.accepted <= in_topic
    assert report.accepted == {(d.tenant_id, d.event_id) for d in workload.events}
    versions = await stack.converge(within=120)
    converged = round(time.monotonic() - t0, 1)
    eu = [v for edge, v in versions.items() if edge.startswith("eu:")]
    assert eu[0] == eu[1], "the two eu edges hold different versions"
    us = versions[next(e for e in versions if e.startswith("us:"))]
    shared = [k for k in us if k[0] == "globex"]
    assert shared
    assert {k: us[k] for k in shared} == {k: eu[0][k] for k in shared}
    figures.update(
        deliveries=len(deliveries),
        rate_per_s=round(rate, 1),
        timeline=timeline,
        converged_at_s=converged,
        restarted_edge_ready_s=round(ready_after, 3),
        statuses={str(k): v for k, v in report.statuses.items()},
    )
