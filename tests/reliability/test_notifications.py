"""Tenant notifications (issue 17) through the real pipeline: ingress, worker (fetching from
the Stripe stand-in), pusher, edge, notifier, each a process on the real broker, and a
receiver that verifies every delivery with the `standardwebhooks` library.

A customer consumes through the edge until its quota runs out, then a top-up invoice
restores it: the tenant hears `quota.threshold_crossed` (50 %, 80 %), `quota.exhausted`
and `quota.restored`, each exactly once. A second run keeps the receiver down while the
worker is SIGKILLed mid-stream and an operator replays stripe.events and usage.events;
once it is back it gets everything, in order, each id once. The plan also meters the
feature `exports`: an endpoint for that feature hears its threshold and exhaustion, and the
customer's endpoint hears nothing of them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from quotaflow.commands.localkafka import free_port
from quotaflow.commands.tenants.endpoints import new_endpoint_secret
from quotaflow.testing.receiver import Receiver
from quotaflow.topics import ensure_topics
from tables.notification import Notification
from tables.tenant import MeteredFeature, NotificationEndpoint, PlanEntry, Tenant
from tests.kafkautil import produce
from tests.processes import EDGE_AUTH, start
from tests.reliability.conftest import StackFactory
from tests.reliability.model import Workload
from tests.reliability.stack import Stack, topic_records
from tests.tables.factories import BASIC, TOPUP, event, invoice, make_tenant, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(420)]

PERIOD = (int(time.time()) - 86_400, int(time.time()) + 29 * 86_400)
LIMIT = 100
STEP = 10
EXPECTED = [
    ("quota.threshold_crossed", 0.5),
    ("quota.threshold_crossed", 0.8),
    ("quota.exhausted", None),
    ("quota.restored", None),
]


EXPORTS = 20  # units of the metered feature `exports` per period


def _tenant(receiver: Receiver, exports: Receiver | None = None) -> Tenant:
    basic = PlanEntry(quota=LIMIT, metered={"exports": MeteredFeature(quota=EXPORTS)})
    base = make_tenant(
        {"basic": basic, "prod_topup": PlanEntry(quota=500, topup=True)},
        alias_key=None,
        stripe_api_key="sk_test_" + secrets.token_hex(12),
    )
    endpoint = NotificationEndpoint(
        id="ep_receiver",
        url=receiver.url,
        thresholds=(0.5, 0.8),
        secret=SecretStr(receiver.secret),
    )
    endpoints: tuple[NotificationEndpoint, ...] = (endpoint,)
    if exports is not None:
        for_feature = NotificationEndpoint(
            id="ep_exports",
            url=exports.url,
            thresholds=(0.5,),
            feature="exports",
            secret=SecretStr(exports.secret),
        )
        endpoints += (for_feature,)
    return base.model_copy(update={"notification_endpoints": endpoints})


async def _stack(
    make_stack: StackFactory,
    receiver: Receiver,
    notifier_port: int,
    exports: Receiver | None = None,
) -> Stack:
    tenant = _tenant(receiver, exports)
    sub = subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD)
    workload = Workload([tenant], {}, finals={("acme", "cus_1"): (sub, 0)})
    stack = make_stack(
        workload,
        {"eu": 1},
        env={
            "QUOTAFLOW_USAGE_REPORT_INTERVAL": "0.2",
            "QUOTAFLOW_NOTIFY_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
            "QUOTAFLOW_NOTIFIER_PORT": str(notifier_port),
            "QUOTAFLOW_NOTIFIER_RETRY_BASE": "0.2",
            "QUOTAFLOW_NOTIFIER_RETRY_MAX_DELAY": "1",
        },
    )
    stack.extra_env["QUOTAFLOW_USAGE_INGRESS_URL"] = stack.ingress_url
    await ensure_topics(stack.settings)
    await produce(
        stack.settings.kafka_bootstrap,
        stack.settings.topics.stripe_events,
        stack.feed.records([("acme", event("customer.subscription.created", sub))]),
    )
    await stack.start_all()
    stack.procs["notifier"] = start(stack.started, ["notifier"], stack.env, stack.tmp)
    return stack


async def _served(stack: Stack, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        view = await stack.edge_view(stack.edge_ports["eu"][0], [("acme", "cus_1")])
        if view[("acme", "cus_1")] is not None:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the edge never served cus_1")


async def _consume(stack: Stack, calls: int, feature: str | None = None) -> None:
    port = stack.edge_ports["eu"][0]
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=5), headers=EDGE_AUTH
    ) as session:
        for _ in range(calls):
            ask: dict[str, object] = {"tenant_id": "acme", "customer_id": "cus_1", "cost": STEP}
            if feature is not None:
                ask["feature"] = feature
            async with session.post(f"http://127.0.0.1:{port}/v1/consume", json=ask) as resp:
                doc = orjson.loads(await resp.read())
                assert resp.status == 200, doc
                assert doc["allowed"], doc
            await asyncio.sleep(0.3)  # several usage batches, so the thresholds come apart


async def _top_up(stack: Stack) -> None:
    paid = invoice(
        "in_topup_1", "cus_1", subscription_id=None, lines=[(TOPUP, 1)], paid_at=int(time.time())
    )
    await produce(
        stack.settings.kafka_bootstrap,
        stack.settings.topics.stripe_events,
        stack.feed.records([("acme", event("invoice.paid", paid))]),
    )


async def _published(stack: Stack, kind: str, within: float = 60.0) -> list[Notification]:
    """Waits until the worker published a notification of `kind`; all of them so far."""
    deadline = time.monotonic() + within
    found: list[Notification] = []
    while time.monotonic() < deadline:
        records = await topic_records(
            stack.settings.kafka_bootstrap, stack.settings.topics.notifications
        )
        found = [Notification.from_json(r.value) for r in records]
        if any(n.type == kind for n in found):
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"no {kind} published: {[n.type for n in found]}")


async def _received(receiver: Receiver, count: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while len(receiver.deliveries) < count:
        assert time.monotonic() < deadline, f"received {receiver.summary()}, want {count}"
        await asyncio.sleep(0.2)
    await asyncio.sleep(2.0)  # anything more (a duplicate) would come now


def _told(receiver: Receiver) -> list[tuple[str, float | None]]:
    return [(d.type, d.data.get("threshold")) for d in receiver.deliveries]


def _cli(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "quotaflow.commands.cli", *args],
        env={**os.environ, **stack.env},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


async def test_threshold_exhausted_and_restored_are_told_exactly_once_each(
    make_stack: StackFactory,
) -> None:
    async with (
        Receiver(secret=new_endpoint_secret()) as receiver,
        Receiver(secret=new_endpoint_secret()) as exports,
    ):
        stack = await _stack(make_stack, receiver, free_port(), exports)
        await _served(stack)
        await _consume(stack, LIMIT // STEP)
        await _published(stack, "quota.exhausted")
        await _top_up(stack)
        await _published(stack, "quota.restored")
        await _received(receiver, len(EXPECTED))
        # The metered feature runs out on its own: its endpoint alone hears of it.
        await _consume(stack, EXPORTS // STEP, feature="exports")
        await _received(exports, 2)

        assert exports.refused == []
        assert [
            (d.type, d.data.get("threshold"), d.data.get("feature")) for d in exports.deliveries
        ] == [
            ("quota.threshold_crossed", 0.5, "exports"),
            ("quota.exhausted", None, "exports"),
        ]
        feature_out = exports.of_type("quota.exhausted")[0]
        assert (feature_out.data["used"], feature_out.data["limit"]) == (EXPORTS, EXPORTS)
        assert {d.data.get("feature") for d in receiver.deliveries} == {None}

        assert receiver.refused == []  # every delivery verified with standardwebhooks
        assert _told(receiver) == EXPECTED
        assert len(set(receiver.ids())) == len(receiver.ids())
        exhausted = receiver.of_type("quota.exhausted")[0]
        assert (exhausted.data["used"], exhausted.data["limit"]) == (LIMIT, LIMIT)
        restored = receiver.of_type("quota.restored")[0]
        assert restored.data["limit"] == LIMIT + 500
        assert restored.data["status"] == "active"


async def test_a_receiver_down_a_worker_killed_and_a_replay_lose_nothing_and_repeat_nothing(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    async with Receiver(secret=new_endpoint_secret(), down=True) as receiver:
        stack = await _stack(make_stack, receiver, free_port())
        await _served(stack)
        await _consume(stack, 6)
        await _published(stack, "quota.threshold_crossed")
        stack.procs["worker"].kill()  # SIGKILL: no commit, no flush
        stack.start_worker()
        await _consume(stack, LIMIT // STEP - 6)
        # The new worker gets the partitions once the group drops the killed member.
        await _published(stack, "quota.exhausted", within=150.0)
        await _top_up(stack)
        await _published(stack, "quota.restored")
        # An operator replays both inputs from the beginning.
        for topic in ("stripe.events", "usage.events"):
            _cli(stack, "replay", "--topic", topic, "--from", "beginning", "--tenant", "acme")
        await asyncio.sleep(3.0)  # let the worker take the replay
        assert receiver.attempts > 0
        assert receiver.deliveries == []
        down_since = time.monotonic()
        receiver.down = False
        await _received(receiver, len(EXPECTED))
        back_after = time.monotonic() - down_since

        assert receiver.refused == []
        assert _told(receiver) == EXPECTED  # everything, in the order it happened
        assert len(set(receiver.ids())) == len(receiver.ids())  # no id twice
        published = await _published(stack, "quota.restored")
        assert {n.id for n in published} == set(receiver.ids())  # no second id for a cause
        assert back_after < 30.0
