"""The pusher carries tenant states to real sidecar apps (in this process, over HTTP, on
the real broker): suspend, resume, region removal, deletion, and a node that restarts.
The same with every component a real process is tests/streams/test_tenant_lifecycle.py."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from edge.cache import SUSPENDED
from quotaflow.commands.localkafka import free_port
from quotaflow.registry import StaticTenantRegistry
from streams.pusher import run_pusher
from tables.tenant import Tenant
from tests.streams.test_pusher import (
    FAST,
    Edge,
    edges,
    eventually,
    latest,
    lifecycle,
    produce,
    push_settings,
    tenant,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
__all__ = ["edges", "push_settings"]  # fixtures, used by name


def suspended(t: Tenant) -> Tenant:
    return t.model_copy(update={"status": "suspended"})


async def until(check: Callable[[], bool], what: str, within: float = 10.0) -> float:
    """Seconds until `check()` holds (polled every 10 ms); fails past `within`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def denied(edge: Edge, tenant_id: str, reason: str) -> bool:
    return edge.cache.consume(tenant_id, "c0", 0).reason == reason


async def test_suspend_resume_remove_and_delete_reach_every_node_within_2s(
    edges: Callable[[], Edge], push_settings: Callable[[list[str]], Awaitable[Any]]
) -> None:
    a, b = edges(), edges()
    await a.start()
    await b.start()
    settings = await push_settings([a.url, b.url])
    registry = StaticTenantRegistry([tenant("euco", "eu"), tenant("both", "eu", "us")])
    quotas = lifecycle("euco", 3, 1) + lifecycle("both", 3, 1)
    await produce(settings, quotas)
    stop = asyncio.Event()
    task = asyncio.create_task(run_pusher(settings, registry, stop, config=FAST))
    try:
        await eventually(lambda: a.holds(latest(quotas)) and b.holds(latest(quotas)), "served")
        nodes = (a, b)

        registry.put(suspended(tenant("euco", "eu")))
        took = await until(
            lambda: all(denied(n, "euco", "tenant_suspended") for n in nodes), "suspended"
        )
        assert took <= 2.0
        assert all(n.cache.consume("both", "c0", 0).allowed for n in nodes)
        # Quotas of a suspended tenant still flow, so resuming serves current ones.
        await produce(settings, [*lifecycle("euco", 1, 2)[1:]])
        await eventually(lambda: a.cache.version("euco", "c0") == 2, "quota still delivered")
        assert a.cache.consume("euco", "c0") == SUSPENDED

        registry.put(tenant("euco", "eu"))
        took = await until(
            lambda: all(n.cache.consume("euco", "c0", 0).allowed for n in nodes), "resumed"
        )
        assert took <= 2.0

        registry.put(tenant("both", "us"))  # region removed
        took = await until(
            lambda: all(denied(n, "both", "tenant_removed") for n in nodes), "region removed"
        )
        assert took <= 2.0
        assert all(n.cache.get("both", "c0") is None for n in nodes)  # dropped from memory

        registry.remove("euco")  # deleted
        took = await until(
            lambda: all(denied(n, "euco", "tenant_removed") for n in nodes), "deleted"
        )
        assert took <= 2.0
        assert len(a.cache) == len(b.cache) == 0
    finally:
        stop.set()
        await task


async def test_a_restarted_node_learns_the_suspension_from_its_snapshot(
    edges: Callable[[], Edge], push_settings: Callable[[list[str]], Awaitable[Any]]
) -> None:
    first = edges()
    await first.start()
    settings = await push_settings([first.url])
    registry = StaticTenantRegistry([tenant("euco", "eu"), suspended(tenant("late", "eu"))])
    quotas = lifecycle("euco", 2, 1) + lifecycle("late", 2, 1)
    await produce(settings, quotas)
    stop = asyncio.Event()
    task = asyncio.create_task(run_pusher(settings, registry, stop, config=FAST))
    try:
        # Suspended before the node ever joined: the snapshot's list says so.
        await eventually(lambda: first.ready and first.holds(latest(quotas)), "joined")
        assert first.cache.consume("late", "c0") == SUSPENDED
        registry.put(suspended(tenant("euco", "eu")))
        await eventually(lambda: denied(first, "euco", "tenant_suspended"), "suspended")
        await first.stop()
        second = Edge(first.port)  # a new process on the same port: empty memory
        await second.start()
        try:
            await eventually(lambda: second.ready and second.holds(latest(quotas)), "rejoined")
            assert second.cache.consume("euco", "c0") == SUSPENDED
            assert second.cache.consume("late", "c1") == SUSPENDED
        finally:
            await second.stop()
    finally:
        stop.set()
        await task


def _more_snapshots(node: Edge, than: int) -> bool:
    return node.snapshots > than


class _Unreadable(StaticTenantRegistry):
    """What a pusher started with an incomplete keyring holds: `late`'s record exists but
    cannot be read (the collaborator; the pusher is under test)."""

    def unreadable(self) -> dict[str, str]:
        return {"late": "document"}


async def test_a_pusher_that_cannot_read_a_record_does_not_make_nodes_remove_that_tenant(
    edges: Callable[[], Edge], push_settings: Callable[[list[str]], Awaitable[Any]]
) -> None:
    node = edges()
    await node.start()
    base = await push_settings([node.url])
    settings = base.model_copy(update={"pusher_port": free_port()})  # its /readyz is read
    quotas = lifecycle("euco", 2, 1) + lifecycle("late", 2, 1)
    await produce(settings, quotas)
    full = StaticTenantRegistry([tenant("euco", "eu"), tenant("late", "eu")])
    for registry in (full, _Unreadable([tenant("euco", "eu")])):
        # The second pusher: restarted with a keyring that cannot open `late`'s record.
        joined = node.snapshots
        stop = asyncio.Event()
        pusher = asyncio.create_task(run_pusher(settings, registry, stop, config=FAST))
        try:
            await eventually(functools.partial(_more_snapshots, node, joined), "a snapshot")
            await eventually(lambda: node.holds(latest(quotas)), "holds every customer")
            if registry is not full:
                ops = f"http://127.0.0.1:{settings.pusher_port}"
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{ops}/readyz") as resp:
                        ready = (resp.status, await resp.json())
                    async with http.get(f"{ops}/metrics") as resp:
                        metrics = await resp.text()
                reason = {"reason": "tenant_records_unreadable", "unreadable_records": 1}
                assert ready == (503, {"ready": False, **reason})
                assert "quotaflow_tenant_records_unreadable 1.0" in metrics
        finally:
            stop.set()
            await pusher
    # Its snapshot carried no tenant list: the node removed nobody.
    assert node.cache.consume("late", "c0", 0).allowed
    assert node.cache.consume("euco", "c0", 0).allowed
