"""Entitlements per feature end to end (issue 14, part 1), every hop a real process on the
real broker: signed webhooks into the ingress, the worker fetching each subscription from
the Stripe stand-in (fetch on, the default), the regional pusher, two edge nodes that
report their usage back through the ingress, and the worker's meter reporter billing each
feature on its own Stripe meter.

The tenant's plan grants, per unit of quantity, 1,000 default units (meter `api_calls`),
the boolean feature `bulk`, and the metered feature `exports`: 5 units, 1 call/s, meter
`exports`. The customer subscribes with quantity 2. Then: node A spends exports and hits
their own rate limit while the default quota is untouched; the core counts exports apart
from the default units; node B, which learnt them only from the core, denies what exceeds
the exports quota and, once it spent the rest, node A denies `exhausted` from the core's
record; Stripe's entitlement summary grants and withdraws the boolean `sso`; the meters
get each feature's units exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tables.quota import QuotaUpdate
from tables.tenant import MeteredFeature, PlanEntry
from tests.processes import EDGE_AUTH
from tests.reliability.conftest import StackFactory
from tests.reliability.model import Workload
from tests.reliability.sender import stripe_signature
from tests.reliability.stack import Stack, topic_records
from tests.tables.factories import (
    Price,
    entitlement_summary,
    event,
    make_tenant,
    subscription,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

PERIOD = (int(time.time()) - 86_400, int(time.time()) + 29 * 86_400)
PRO = Price("price_rating_pro", "rating_pro")
SECRET = "whsec_test"  # make_tenant's webhook secret
JSON = dict[str, Any]


async def _webhook(stack: Stack, body: JSON) -> None:
    raw = orjson.dumps(body)
    headers = {
        "Stripe-Signature": stripe_signature(raw, SECRET),
        "Content-Type": "application/json",
    }
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(
            f"{stack.ingress_url}/v1/webhooks/stripe/acme", data=raw, headers=headers
        ) as r,
    ):
        assert r.status == 200, await r.read()


async def _ask(port: int, route: str, **fields: Any) -> JSON:
    ask = {"tenant_id": "acme", "customer_id": "cus_1", **fields}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=EDGE_AUTH) as s,
        s.post(f"http://127.0.0.1:{port}/v1/{route}", json=ask) as resp,
    ):
        doc: JSON = orjson.loads(await resp.read())
        assert resp.status == 200, doc
        return doc


async def _until(what: str, probe: Callable[[], Any], within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {within}s; last: {last!r}")


async def _edge_quota(stack: Stack, port: int) -> JSON | None:
    return (await stack.edge_view(port, [("acme", "cus_1")]))[("acme", "cus_1")]


async def _core_record(stack: Stack, exports_used: int, default_used: int) -> QuotaUpdate | None:
    records = await topic_records(
        stack.settings.kafka_bootstrap, stack.settings.topics.quota_updates
    )
    for r in records:
        q = QuotaUpdate.from_json(r.value)
        feature = q.metered.get("exports")
        if feature is not None and (feature.used, q.used) == (exports_used, default_used):
            return q
    return None


async def test_per_feature_quotas_rates_and_entitlements_flow_from_the_plan_to_the_edge(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    api_key = "sk_test_" + secrets.token_hex(12)
    plan = PlanEntry(
        quota=1000,
        meter_event_name="api_calls",
        features=("bulk",),
        metered={"exports": MeteredFeature(quota=5, rate_per_second=1, meter_event_name="exports")},
    )
    tenant = make_tenant({"rating_pro": plan}, alias_key=None, stripe_api_key=api_key)
    sub = subscription("sub_1", "cus_1", "active", [(PRO, 2)], period=PERIOD)
    # The stand-in holds the subscription before its webhook is sent (the worker fetches it).
    workload = Workload([tenant], {"acme": SECRET}, finals={("acme", "cus_1"): (sub, 0)})
    thresholds = [round(n / 100, 2) for n in range(1, 101)]
    stack = make_stack(
        workload,
        {"eu": 2},
        env={
            "QUOTAFLOW_USAGE_REPORT_INTERVAL": "0.2",
            "QUOTAFLOW_USAGE_THRESHOLDS": orjson.dumps(thresholds).decode(),
        },
    )
    stack.extra_env["QUOTAFLOW_USAGE_INGRESS_URL"] = stack.ingress_url
    stack.extra_env["QUOTAFLOW_USAGE_SPOOL_DIR"] = str(tmp_path / "spool")
    await stack.start_all()
    node_a, node_b = stack.edge_ports["eu"]

    await _webhook(stack, event("customer.subscription.created", sub))

    async def granted(port: int) -> JSON | None:
        doc = await _edge_quota(stack, port)
        return doc if doc and doc.get("metered", {}).get("exports") else None

    for port in (node_a, node_b):
        doc = await _until("the plan's features at the edge", functools.partial(granted, port))
        assert (doc["limit"], doc["features"]) == (2000, ["bulk"])
        exports = doc["metered"]["exports"]
        assert (exports["limit"], exports["remaining"], exports["rate_per_second"]) == (10, 10, 2.0)
    stack.feed.assert_fetched("acme")  # the worker read the subscription from Stripe

    # The default quota (and the boolean feature, which spends it) are not exports. Spent
    # first: 2 of 2,000 units cross no threshold, so the core publishes no record for a
    # report batch holding only them; the exports after them do (40 %, 80 %), and the last
    # record carries both counts however the reporter splits its batches.
    assert (await _ask(node_a, "consume", cost=1))["remaining"] == 1999
    assert (await _ask(node_a, "consume", feature="bulk", cost=1))["remaining"] == 1998
    assert (await _ask(node_a, "check", feature="sso"))["reason"] == "no_entitlement"

    # Node A: exports spend their own quota and their own bucket (2 calls/s, burst 2).
    assert await _ask(node_a, "consume", feature="exports", cost=4) == {
        "allowed": True,
        "remaining": 6,
        "reason": "ok",
    }
    assert (await _ask(node_a, "consume", feature="exports", cost=4))["remaining"] == 2
    limited = await _ask(node_a, "consume", feature="exports", cost=1)
    assert (limited["allowed"], limited["reason"]) == (False, "rate_limited")
    assert 0 < limited["retry_after"] <= 0.5
    view = await _edge_quota(stack, node_a)
    assert view is not None
    assert view["remaining"] == 1998  # exports are counted apart

    # The core counts each feature apart (usage reported by node A through the ingress).
    await _until("the core's count of A's usage", functools.partial(_core_record, stack, 8, 2))

    # Node B knows of those 8 exports only from the core's record.
    async def b_sees_core() -> bool:
        doc = await _edge_quota(stack, node_b)
        return doc is not None and doc["metered"]["exports"]["remaining"] == 2

    await _until("node B learning A's exports", b_sees_core)
    assert await _ask(node_b, "consume", feature="exports", cost=3) == {
        "allowed": False,
        "remaining": 2,
        "reason": "insufficient",
    }
    assert (await _ask(node_b, "consume", feature="exports", cost=2))["remaining"] == 0
    assert (await _ask(node_b, "check", feature="exports"))["reason"] == "exhausted"
    assert (await _ask(node_b, "consume", cost=1))["allowed"]  # the default is untouched

    # Node A still holds 2 exports locally until the core's record of B's usage arrives.
    async def a_exhausted() -> bool:
        return bool((await _ask(node_a, "check", feature="exports"))["reason"] == "exhausted")

    await _until("node A denying exports from the core's record", a_exhausted)
    assert (await _ask(node_a, "check", cost=1))["allowed"]

    # Stripe's entitlements become boolean features, and go again.
    await _webhook(
        stack,
        event(
            "entitlements.active_entitlement_summary.updated",
            entitlement_summary("cus_1", ["sso"]),
            created=int(time.time()),
        ),
    )

    async def sso(port: int, reason: str) -> bool:
        return bool((await _ask(port, "check", feature="sso"))["reason"] == reason)

    await _until("sso granted at node A", functools.partial(sso, node_a, "ok"))
    await _until("sso granted at node B", functools.partial(sso, node_b, "ok"))
    await _webhook(
        stack,
        event(
            "entitlements.active_entitlement_summary.updated",
            entitlement_summary("cus_1", []),
            created=int(time.time()) + 1,
        ),
    )
    await _until("sso withdrawn at node A", functools.partial(sso, node_a, "no_entitlement"))

    # Billing per feature: each feature's units on its own meter, once.
    assert stack.stripe is not None
    stripe = stack.stripe

    async def billed() -> dict[str, int] | None:
        events = await asyncio.to_thread(stripe.meter_events, api_key)
        sums: dict[str, int] = {}
        for e in events:
            sums[e["event_name"]] = sums.get(e["event_name"], 0) + int(e["payload"]["value"])
        return sums if sums == {"exports": 10, "api_calls": 3} else None

    await _until("each feature billed on its meter", billed)
    events = await asyncio.to_thread(stripe.meter_events, api_key)
    assert all(e["payload"]["stripe_customer_id"] == "cus_1" for e in events)
    assert len({e["identifier"] for e in events}) == len(events)
    jobs = [
        orjson.loads(r.value)
        for r in await topic_records(
            stack.settings.kafka_bootstrap, stack.settings.topics.meter_jobs
        )
    ]
    assert sum(j["value"] for j in jobs if j["event_name"] == "exports") == 10
