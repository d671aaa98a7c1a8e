"""A tenant's genuine Stripe deliveries keep getting 200 on their first attempt while an
attacker without the secret floods its route with bad signatures and holds hundreds of
slow connections to it (scenario 14 of RELIABILITY.md).

Real processes: `quotaflow ingress` on the session broker, the attacker in a process of
its own (`tests/reliability/attacker.py`) connecting from other loopback addresses than
the Stripe-like sender (127.0.0.1), as an attacker's addresses differ from Stripe's.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
import pytest

from quotaflow.topics import ensure_topics
from tests.reliability.conftest import StackFactory
from tests.reliability.model import build
from tests.reliability.sender import percentile, stripe_signature
from tests.reliability.stack import event_ids, topic_records

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

WORKERS = 2  # `quotaflow ingress --workers 2`, the default on the 2-core machine
RATE = 100.0  # genuine deliveries per second
CALM_SECONDS = 10.0
ATTACK_SECONDS = 25.0
BAD_SIGNATURE_SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]  # 8 x 20 failures/s > route's 100
SLOW_SOURCES = [f"127.0.0.{i}" for i in range(20, 25)]
SLOW_PER_SOURCE = 80  # 400 slow connections; 64 per source are admitted at a time


class StripeLike:
    """Paced genuine deliveries of one tenant; records every status of a first attempt."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self.secret = secret
        self.seq = 0
        self.sent: set[str] = set()
        self.statuses: Counter[int] = Counter()

    async def run(self, seconds: float) -> list[float]:
        latencies: list[float] = []
        tasks: list[asyncio.Task[None]] = []
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:

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
                    "Content-Type": "application/json; charset=utf-8",
                }
                started = time.perf_counter()
                try:
                    async with http.post(self.url, data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                self.statuses[status] += 1
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                    self.sent.add(event_id)

            begun, sent = time.monotonic(), 0
            while time.monotonic() < begun + seconds:
                self.seq += 1
                sent += 1
                tasks.append(asyncio.create_task(one(f"evt_genuine_{self.seq}")))
                await asyncio.sleep(max(0.0, begun + sent / RATE - time.monotonic()))
            await asyncio.gather(*tasks)
        return latencies


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


async def test_genuine_deliveries_get_200_first_time_under_a_flood_and_slowloris(
    make_stack: StackFactory, figures: dict[str, Any]
) -> None:
    workload = build(["acme"], 1, seed=31)
    stack = make_stack(workload, {})
    stack.ingress_workers = WORKERS
    await ensure_topics(stack.settings)
    stack.start_ingress()
    stripe = StripeLike(f"{stack.ingress_url}/v1/webhooks/stripe/acme", workload.secrets["acme"])
    calm = await stripe.run(CALM_SECONDS)
    load_calm = os.getloadavg()

    plan = {
        "seed": 12,
        "concurrency": 1,
        "targets": [
            {
                "fuzzer": "bad_signature",
                "port": stack.ingress_port,
                "victim": "acme",
                "duration": ATTACK_SECONDS,
                "sources": BAD_SIGNATURE_SOURCES,
                "concurrency": 4,
            },
            {
                "fuzzer": "slow_body",
                "port": stack.ingress_port,
                "victim": "acme",
                "duration": ATTACK_SECONDS,
                "sources": SLOW_SOURCES,
                "concurrency": SLOW_PER_SOURCE,
                "drip": 1.0,
            },
        ],
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.reliability.attacker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    attack = asyncio.ensure_future(proc.communicate(orjson.dumps(plan)))
    await asyncio.sleep(2.0)  # let the slow connections pile up first
    hostile = await stripe.run(ATTACK_SECONDS - 4.0)
    load_attack = os.getloadavg()
    async with asyncio.timeout(60):
        out, _ = await attack
    assert proc.returncode == 0, "the attacker process failed"
    report = orjson.loads(out)
    results = Counter({(kind, status): n for kind, status, n in report["results"]})

    figures.update(
        genuine_rate_per_s=RATE,
        calm=_summary(calm),
        under_attack=_summary(hostile),
        genuine_statuses=dict(stripe.statuses),
        attacker={f"{kind} {status}": n for (kind, status), n in sorted(results.items())},
        attacker_cpu_seconds=round(report["cpu_seconds"], 1),
        load_average_calm=load_calm,
        load_average_attack=load_attack,
    )
    # Every genuine delivery was answered 200 on its first (and only) attempt.
    assert set(stripe.statuses) == {200}, stripe.statuses
    # The attack was real: bad signatures refused, then their sources throttled; slow
    # bodies cut with 408 or turned away at their source's cap.
    assert results[("bad_signature", 400)] > 0
    assert results[("bad_signature", 429)] > 0
    assert results[("slow_body", 408)] >= len(SLOW_SOURCES) * 64
    assert {status for kind, status in results if kind == "bad_signature"} <= {400, 429}
    assert stack.procs["ingress"].proc.poll() is None
    s = stack.settings
    published = event_ids(await topic_records(s.kafka_bootstrap, s.topics.stripe_events))
    assert published == {("acme", e) for e in stripe.sent}
