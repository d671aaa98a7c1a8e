"""Usage that cannot be lost (issue 20), with every hop a real process on the real broker:
ingress, worker (with its meter reporter, against the Stripe stand-in), pusher and edge.

An edge node counts usage, then a holder of the region's edge key signs 65 batches under
the node's id with another incarnation and huge sequence numbers (enough to fold a shared
per-node mark past every genuine sequence); the node's later genuine batches still count.
Then the node is restarted with an EMPTY spool (a container without its volume) and the
same node id: its new spool starts again at seq 1, and that usage counts too, in `used`
and in the meter jobs and Stripe meter events. Before spool incarnations, every batch of
the new spool up to the old high-water mark was dropped as a duplicate.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from quotaflow.commands.localkafka import free_port
from quotaflow.testing.harness import wait_until
from quotaflow.topics import ensure_topics
from tables.dedupe import parse_batch_id
from tables.quota import QuotaUpdate
from tables.tenant import PlanEntry
from tests.kafkautil import produce
from tests.processes import EDGE_AUTH
from tests.reliability.conftest import StackFactory
from tests.reliability.model import Workload
from tests.reliability.stack import Stack, topic_records
from tests.tables.factories import BASIC, event, make_tenant, subscription
from wire import SIGNATURE_HEADER, Kind, Signer

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

PERIOD = (int(time.time()) - 86_400, int(time.time()) + 29 * 86_400)
NODE = "eu-node-1"
HUGE = 10**18 - 1
FORGED = 65  # MAX_ABOVE + 1: enough to fold a shared mark's low past every genuine seq
STEP = 10  # units per consume; thresholds every 1 % of 1000, so each batch publishes


async def _consume(stack: Stack, calls: int) -> None:
    port = stack.edge_ports["eu"][0]
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout, headers=EDGE_AUTH) as session:
        for _ in range(calls):
            ask = {"tenant_id": "acme", "customer_id": "cus_1", "cost": STEP}
            async with session.post(f"http://127.0.0.1:{port}/v1/consume", json=ask) as resp:
                doc = orjson.loads(await resp.read())
                assert resp.status == 200, doc
                assert doc["allowed"], doc
            await asyncio.sleep(0.25)  # spread over several report intervals: several batches


async def _served(stack: Stack, within: float = 30.0) -> None:
    """The edge node knows cus_1 (the pusher gave it the quota)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        view = await stack.edge_view(stack.edge_ports["eu"][0], [("acme", "cus_1")])
        if view[("acme", "cus_1")] is not None:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the edge never served cus_1")


async def _used(stack: Stack, want: int, within: float = 60.0) -> list[QuotaUpdate]:
    """Waits until the core published `used == want` for cus_1; the updates so far."""
    deadline = time.monotonic() + within
    quotas: list[QuotaUpdate] = []
    while time.monotonic() < deadline:
        records = await topic_records(
            stack.settings.kafka_bootstrap, stack.settings.topics.quota_updates
        )
        quotas = [QuotaUpdate.from_json(r.value) for r in records]
        if any(q.used == want for q in quotas):
            return quotas
        await asyncio.sleep(0.5)
    raise AssertionError(f"used never reached {want}: {[q.used for q in quotas]}")


async def _forge(stack: Stack, count: int) -> None:
    """Batches under NODE's id, signed with the region's edge key, another incarnation."""
    signer = Signer(Kind.USAGE, [stack.edge_keys["eu"]])
    incarnation = secrets.token_hex(8)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for n in range(count):
            body = orjson.dumps(
                {
                    "batch_id": f"{NODE}:{incarnation}:{HUGE - n}",
                    "node_id": NODE,
                    "region": "eu",
                    "sent_at": time.time(),
                    "items": [{"tenant_id": "acme", "customer_id": "cus_1", "units": STEP}],
                }
            )
            headers = {
                **signer.headers(body),
                "X-Quotaflow-Region": "eu",
                "Content-Type": "application/json",
            }
            assert SIGNATURE_HEADER in headers
            async with session.post(
                f"{stack.ingress_url}/v1/usage", data=body, headers=headers
            ) as resp:
                assert resp.status == 200, await resp.read()


async def _metric(port: int, name: str) -> float:
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


def _meter_events(stack: Stack, account: str, count: int) -> list[dict[str, Any]]:
    stripe = stack.stripe
    assert stripe is not None
    events: list[dict[str, Any]] = []

    def enough() -> bool:
        events[:] = stripe.meter_events(account)
        return len(events) >= count

    wait_until(
        enough,
        timeout=60,
        interval=0.3,
        what=f"{count} meter events at Stripe",
        detail=lambda: f"{len(events)} there",
    )
    return events


async def test_a_reset_spool_and_a_forged_incarnation_lose_no_genuine_usage(
    make_stack: StackFactory, tmp_path: Path, figures: dict[str, Any]
) -> None:
    api_key = "sk_test_" + secrets.token_hex(12)
    tenant = make_tenant(
        {"basic": PlanEntry(quota=1000, meter_event_name="api_calls")},
        alias_key=None,
        stripe_api_key=api_key,
    )
    sub = subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD)
    workload = Workload([tenant], {}, finals={("acme", "cus_1"): (sub, 0)})
    thresholds = [round(n / 100, 2) for n in range(1, 101)]
    stack = make_stack(
        workload,
        {"eu": 1},
        env={
            "QUOTAFLOW_USAGE_NODE_ID": NODE,
            "QUOTAFLOW_USAGE_REPORT_INTERVAL": "0.2",
            "QUOTAFLOW_USAGE_THRESHOLDS": orjson.dumps(thresholds).decode(),
        },
    )
    stack.extra_env["QUOTAFLOW_USAGE_INGRESS_URL"] = stack.ingress_url
    stack.extra_env["QUOTAFLOW_USAGE_SPOOL_DIR"] = str(tmp_path / "volume-1")
    await ensure_topics(stack.settings)
    await produce(
        stack.settings.kafka_bootstrap,
        stack.settings.topics.stripe_events,
        stack.feed.records([("acme", event("customer.subscription.created", sub))]),
    )
    worker_port = free_port()
    await stack.start_all(worker_web_port=worker_port)
    await _served(stack)

    # The genuine node's first spool: one batch or more, seq 1 onwards.
    await _consume(stack, 1)
    await _used(stack, STEP)
    # A holder of the region's edge key tries to block the node's later batches.
    await _forge(stack, FORGED)
    await _used(stack, STEP + FORGED * STEP)
    await _consume(stack, 5)
    before_reset = STEP * 6 + FORGED * STEP
    await _used(stack, before_reset)

    # The container restarts without its volume: same node id, empty spool.
    stack.procs["edge-eu-0"].stop()
    stack.extra_env["QUOTAFLOW_USAGE_SPOOL_DIR"] = str(tmp_path / "volume-2")
    started = time.monotonic()
    stack.start_edge("eu", 0)
    await _served(stack)
    await _consume(stack, 10)
    total = before_reset + 10 * STEP
    quotas = await _used(stack, total)
    counted_after = time.monotonic() - started

    assert max(q.used for q in quotas) == total  # nothing counted twice either
    jobs = [
        orjson.loads(r.value)
        for r in await topic_records(
            stack.settings.kafka_bootstrap, stack.settings.topics.meter_jobs
        )
    ]
    assert sum(j["value"] for j in jobs) == total
    batches = [parse_batch_id(j["batch_id"]) for j in jobs]
    assert all(b is not None and b.node == NODE for b in batches)
    incarnations = {b.incarnation for b in batches if b is not None}
    assert len(incarnations) == 3  # the first spool, the forger's, the empty spool's
    # Both genuine spools had a batch 1: the second one's was not taken for the first's.
    assert sum(1 for b in batches if b is not None and b.seq == 1) == 2
    events = await asyncio.to_thread(_meter_events, stack, api_key, len(jobs))
    assert sum(int(e["payload"]["value"]) for e in events) == total
    assert {e["identifier"] for e in events} == {j["identifier"] for j in jobs}
    # The forged incarnation and the reset each opened a new incarnation of the node.
    assert await _metric(worker_port, "quotaflow_usage_spool_resets_total") == 2.0
    figures.update(
        {
            "units_consumed_genuine": STEP * 16,
            "units_forged": FORGED * STEP,
            "used_in_core": max(q.used for q in quotas),
            "meter_jobs": len(jobs),
            "meter_events_units": sum(int(e["payload"]["value"]) for e in events),
            "restart_to_counted_s": round(counted_after, 2),
        }
    )
