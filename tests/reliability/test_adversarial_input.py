"""Over ten thousand hostile requests at the ingress webhook routes and at an edge's push
route, while a bystander tenant's valid webhooks flow: every hostile request is refused
with a 4xx, none reaches `stripe.events` or an edge's state, both processes stay up and
healthy, and the bystander's p99 is measured with and without the attack (figures only).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from tests.reliability.conftest import StackFactory
from tests.reliability.fuzz import (
    Attack,
    PushFuzzer,
    WebhookFuzzer,
    push_signature,
    request,
    send_raw,
)
from tests.reliability.model import build
from tests.reliability.sender import StripeLikeSender, percentile, stripe_signature
from tests.reliability.stack import Stack, event_ids, topic_records

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

WEBHOOK_ATTACKS = 10_000
PUSH_ATTACKS = 2_500
ATTACK_CONCURRENCY = 24
VALID_RATE = 100.0  # bystander webhooks per second
BASELINE_SECONDS = 10.0


class Bystander:
    """Valid, signed, paced webhooks of one tenant (a type the worker ignores)."""

    def __init__(self, stack: Stack, tenant: str, secret: str) -> None:
        self.url = f"{stack.ingress_url}/v1/webhooks/stripe/{tenant}"
        self.secret = secret
        self.seq = 0
        self.sent: set[str] = set()
        self.statuses: Counter[int] = Counter()

    async def run(self, keep_going: Callable[[], bool]) -> list[float]:
        latencies: list[float] = []
        tasks: list[asyncio.Task[None]] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def one(event_id: str) -> None:
                body = orjson.dumps(
                    {
                        "id": event_id,
                        "object": "event",
                        "type": "charge.succeeded",
                        "livemode": False,
                        "created": int(time.time()),
                        "data": {"object": {"id": "ch_1", "object": "charge"}},
                    }
                )
                headers = {
                    "Stripe-Signature": stripe_signature(body, self.secret),
                    "Content-Type": "application/json",
                }
                started = time.perf_counter()
                async with http.post(self.url, data=body, headers=headers) as resp:
                    await resp.read()
                self.statuses[resp.status] += 1
                if resp.status == 200:
                    latencies.append(time.perf_counter() - started)
                    self.sent.add(event_id)

            begun = time.monotonic()
            while keep_going():
                self.seq += 1
                tasks.append(asyncio.create_task(one(f"evt_valid_{self.seq}")))
                await asyncio.sleep(max(0.0, begun + self.seq / VALID_RATE - time.monotonic()))
            await asyncio.gather(*tasks)
        return latencies


async def _attack(
    port: int, make: Callable[[], Attack], count: int, results: Counter[tuple[str, int]]
) -> None:
    queue = [make() for _ in range(count)]

    async def worker() -> None:
        while queue:
            attack = queue.pop()
            results[(attack.kind, await send_raw(port, attack))] += 1

    await asyncio.gather(*(worker() for _ in range(ATTACK_CONCURRENCY)))


async def _healthy(url: str) -> bool:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(f"{url}/healthz") as resp:
        return resp.status == 200


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


async def test_ten_thousand_hostile_requests_are_refused_and_change_nothing(
    make_stack: StackFactory, figures: dict[str, Any]
) -> None:
    workload = build(["victim", "bystander"], 10, seed=29)
    stack = make_stack(
        workload,
        {"eu": 1},
        env={"QUOTAFLOW_MAX_BODY_BYTES": "65536", "QUOTAFLOW_INGRESS_BODY_READ_TIMEOUT": "1"},
    )
    await stack.start_all()
    await StripeLikeSender(stack.ingress_url, workload.secrets).send_all(
        workload.deliveries(), rate=200
    )
    await stack.converge()
    bystander = Bystander(stack, "bystander", workload.secrets["bystander"])
    until = time.monotonic() + BASELINE_SECONDS
    calm = await bystander.run(lambda: time.monotonic() < until)

    rng = random.Random(1234)
    hooks = WebhookFuzzer(rng, "victim", workload.secrets["victim"], workload.secrets["bystander"])
    edge_port = stack.edge_ports["eu"][0]
    pushes = PushFuzzer(rng, "eu", stack.push_keys["eu"], ("victim", "cus_victim_0"))
    for n in range(5):  # genuine, harmless pushes (no updates) for the replay attack
        body = orjson.dumps({"region": "eu", "push_id": f"p{n}", "updates": [], "snapshot": None})
        sig = push_signature(stack.push_keys["eu"], body)
        raw = request("POST", "/v1/push", [(b"X-Quotaflow-Signature", sig)], body)
        assert await send_raw(edge_port, Attack("genuine", raw)) == 200
        pushes.replayable.append(raw)
    results: Counter[tuple[str, int]] = Counter()
    started = time.monotonic()
    attack = asyncio.ensure_future(
        asyncio.gather(
            _attack(stack.ingress_port, hooks.next, WEBHOOK_ATTACKS, results),
            _attack(edge_port, pushes.next, PUSH_ATTACKS, results),
        )
    )
    hostile = await bystander.run(lambda: not attack.done())
    await attack
    attack_seconds = time.monotonic() - started

    refused = {k: n for k, n in results.items() if 400 <= k[1] < 500}
    assert sum(results.values()) == WEBHOOK_ATTACKS + PUSH_ATTACKS
    assert results == refused, f"not refused with a 4xx: {results - Counter(refused)}"
    assert stack.procs["ingress"].proc.poll() is None
    assert stack.procs["edge-eu-0"].proc.poll() is None
    assert await _healthy(stack.ingress_url)
    assert await _healthy(f"http://127.0.0.1:{edge_port}")
    s = stack.settings
    published = event_ids(await topic_records(s.kafka_bootstrap, s.topics.stripe_events))
    genuine = {(d.tenant_id, d.event_id) for d in workload.events}
    valid = {("bystander", e) for e in bystander.sent}
    assert published == genuine | valid, "a hostile request reached stripe.events"
    await stack.converge()
    attacked = await stack.edge_view(edge_port, [("attack", "cus_attack")])
    assert attacked[("attack", "cus_attack")] is None

    by_kind: dict[str, dict[int, int]] = {}
    for (kind, status), n in sorted(results.items()):
        by_kind.setdefault(kind, {})[status] = n
    figures.update(
        hostile_requests=sum(results.values()),
        attack_seconds=round(attack_seconds, 1),
        refused_by_kind=by_kind,
        bystander_rate_per_s=VALID_RATE,
        bystander_without_attack=_summary(calm),
        bystander_during_attack=_summary(hostile),
        bystander_statuses=dict(bystander.statuses),
    )
