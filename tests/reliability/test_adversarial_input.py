"""Fifteen thousand hostile requests at the ingress webhook routes, the ingress usage
route and an edge's push route, while a bystander tenant's valid webhooks flow: every
hostile request is refused with a 4xx, none reaches `stripe.events`, `usage.events` or an
edge's state, both processes stay up and healthy, and the bystander's p99 is measured
with and without the attack (figures only). The attacker is a process of its own
(`tests/reliability/attacker.py`), so its work does not share the bystander's event loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.reliability.conftest import StackFactory
from tests.reliability.fuzz import Attack, push_signature, request, send_raw, signature
from tests.reliability.fuzz_usage import MAX_ITEMS, REGION, SIGNATURE
from tests.reliability.model import build
from tests.reliability.sender import StripeLikeSender, percentile, stripe_signature
from tests.reliability.stack import Stack, event_ids, topic_records
from wire import generate_keypair

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

WEBHOOK_ATTACKS = 10_000
PUSH_ATTACKS = 2_500
USAGE_ATTACKS = 2_500
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

            # Paced from this run's own start and count (`seq` only keeps ids unique across
            # runs): a pace carried over from an earlier run would idle through this one.
            begun, sent = time.monotonic(), 0
            while keep_going():
                self.seq += 1
                sent += 1
                tasks.append(asyncio.create_task(one(f"evt_valid_{self.seq}")))
                await asyncio.sleep(max(0.0, begun + sent / VALID_RATE - time.monotonic()))
            await asyncio.gather(*tasks)
        return latencies


async def _run_attacker(plan: dict[str, Any]) -> dict[str, Any]:
    """`python -m tests.reliability.attacker` with `plan` on stdin; its JSON report."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.reliability.attacker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(240):
        out, _ = await proc.communicate(orjson.dumps(plan))
    assert proc.returncode == 0, "the attacker process failed"
    report: dict[str, Any] = orjson.loads(out)
    return report


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def _genuine_usage(key: str, seq: int) -> bytes:
    """A valid usage report of a probe customer outside the reference, as an edge signs it."""
    body = orjson.dumps(
        {
            "batch_id": f"probe:{seq}",
            "node_id": "probe",
            "region": "eu",
            "sent_at": time.time(),
            "items": [{"tenant_id": "victim", "customer_id": "cus_usage_probe", "units": 1}],
        }
    )
    headers = [
        (b"Content-Type", b"application/json"),
        (REGION, b"eu"),
        (SIGNATURE, signature("usage", key, body)),
    ]
    return request("POST", "/v1/usage", headers, body)


async def test_fifteen_thousand_hostile_requests_are_refused_and_change_nothing(
    make_stack: StackFactory, figures: dict[str, Any]
) -> None:
    workload = build(["victim", "bystander"], 10, seed=29)
    stack = make_stack(
        workload,
        {"eu": 1},
        env={
            "QUOTAFLOW_MAX_BODY_BYTES": "65536",
            "QUOTAFLOW_INGRESS_BODY_READ_TIMEOUT": "1",
            "QUOTAFLOW_USAGE_MAX_BODY_BYTES": "65536",
            "QUOTAFLOW_USAGE_MAX_ITEMS": str(MAX_ITEMS),
        },
    )
    us_key = stack.edge_keys["us"] = generate_keypair()[0]  # a region with keys, no tenant
    await stack.start_all()
    await StripeLikeSender(stack.ingress_url, workload.secrets).send_all(
        workload.deliveries(), rate=200
    )
    await stack.converge()
    bystander = Bystander(stack, "bystander", workload.secrets["bystander"])
    until = time.monotonic() + BASELINE_SECONDS
    calm = await bystander.run(lambda: time.monotonic() < until)

    edge_port = stack.edge_ports["eu"][0]
    eu_key = stack.push_keys["eu"]
    genuine_pushes: list[str] = []
    for n in range(5):  # genuine, harmless pushes (no updates) for the replay attack
        body = orjson.dumps({"region": "eu", "push_id": f"p{n}", "updates": [], "snapshot": None})
        sig = push_signature(eu_key, body)
        raw = request("POST", "/v1/push", [(b"X-Quotaflow-Signature", sig)], body)
        assert await send_raw(edge_port, Attack("genuine", raw)) == 200
        genuine_pushes.append(raw.decode("latin-1"))
    genuine_usage: list[str] = []
    for n in range(1, 6):  # genuine usage reports, for the replay attack
        raw = _genuine_usage(stack.edge_keys["eu"], n)
        assert await send_raw(stack.ingress_port, Attack("genuine", raw)) == 200
        genuine_usage.append(raw.decode("latin-1"))
    victim = ("victim", "cus_victim_0")
    plan: dict[str, Any] = {
        "seed": 1234,
        "concurrency": ATTACK_CONCURRENCY,
        "targets": [
            {
                "fuzzer": "webhook",
                "port": stack.ingress_port,
                "count": WEBHOOK_ATTACKS,
                "victim": "victim",
                "secret": workload.secrets["victim"],
                "other_secret": workload.secrets["bystander"],
            },
            {
                "fuzzer": "push",
                "port": edge_port,
                "count": PUSH_ATTACKS,
                "region": "eu",
                "key": eu_key,
                "target": victim,
                "replayable": genuine_pushes,
            },
            {
                "fuzzer": "usage",
                "port": stack.ingress_port,
                "count": USAGE_ATTACKS,
                "region": "eu",
                "key": stack.edge_keys["eu"],
                "other_region": "us",
                "other_key": us_key,
                "victim": victim,
                "replayable": genuine_usage,
            },
        ],
    }
    ingress_pid = stack.procs["ingress"].proc.pid
    edge_pid = stack.procs["edge-eu-0"].proc.pid
    cpu_before = _cpu_seconds(ingress_pid), _cpu_seconds(edge_pid)
    attack = asyncio.ensure_future(_run_attacker(plan))
    hostile = await bystander.run(lambda: not attack.done())
    report = await attack
    cpu_ingress = _cpu_seconds(ingress_pid) - cpu_before[0]
    cpu_edge = _cpu_seconds(edge_pid) - cpu_before[1]

    # The control: the same requests per second per target and connection pattern, but
    # harmless (`GET /healthz`), to tell what the attack costs from what any such load
    # costs on this machine.
    control_plan = {
        **plan,
        "targets": [
            {
                "fuzzer": "healthz",
                "port": t["port"],
                "count": t["count"],
                "seconds": report["seconds"],
            }
            for t in plan["targets"]
        ],
    }
    cpu_before = _cpu_seconds(ingress_pid), _cpu_seconds(edge_pid)
    control = asyncio.ensure_future(_run_attacker(control_plan))
    harmless = await bystander.run(lambda: not control.done())
    control_report = await control
    cpu_control = _cpu_seconds(ingress_pid) - cpu_before[0]

    results: Counter[tuple[str, int]] = Counter(
        {(kind, status): n for kind, status, n in report["results"]}
    )
    refused = {k: n for k, n in results.items() if 400 <= k[1] < 500}
    assert sum(results.values()) == WEBHOOK_ATTACKS + PUSH_ATTACKS + USAGE_ATTACKS
    assert results == refused, f"not refused with a 4xx: {results - Counter(refused)}"
    usage_kinds = {kind for kind, _ in results if kind.startswith("usage_")}
    assert len(usage_kinds) >= 25, f"usage attacks not all sent: {sorted(usage_kinds)}"
    assert stack.procs["ingress"].proc.poll() is None
    assert stack.procs["edge-eu-0"].proc.poll() is None
    assert await _healthy(stack.ingress_url)
    assert await _healthy(f"http://127.0.0.1:{edge_port}")
    s = stack.settings
    published = event_ids(await topic_records(s.kafka_bootstrap, s.topics.stripe_events))
    genuine = {(d.tenant_id, d.event_id) for d in workload.events}
    valid = {("bystander", e) for e in bystander.sent}
    assert published == genuine | valid, "a hostile request reached stripe.events"
    usage = await topic_records(s.kafka_bootstrap, s.topics.usage_events)
    batches = sorted(orjson.loads(r.value)["batch_id"] for r in usage)
    assert batches == [f"probe:{n}" for n in range(1, 6)], "a hostile report reached usage.events"
    await stack.converge()
    attacked = await stack.edge_view(edge_port, [("attack", "cus_attack")])
    assert attacked[("attack", "cus_attack")] is None

    by_kind: dict[str, dict[int, int]] = {}
    for (kind, status), n in sorted(results.items()):
        by_kind.setdefault(kind, {})[status] = n
    hostile_total = sum(results.values())
    figures.update(
        hostile_requests=hostile_total,
        attack_seconds=round(report["seconds"], 1),
        attacker_cpu_seconds=round(report["cpu_seconds"], 1),
        ingress_cpu_seconds_during_attack=round(cpu_ingress, 1),
        ingress_cpu_ms_per_ingress_request=round(
            cpu_ingress * 1000 / (WEBHOOK_ATTACKS + USAGE_ATTACKS + len(hostile)), 3
        ),
        edge_cpu_seconds_during_attack=round(cpu_edge, 1),
        load_average=os.getloadavg(),
        refused_by_kind=by_kind,
        bystander_rate_per_s=VALID_RATE,
        bystander_without_attack=_summary(calm),
        bystander_during_attack=_summary(hostile),
        bystander_during_harmless_load=_summary(harmless),
        harmless_load_seconds=round(control_report["seconds"], 1),
        ingress_cpu_seconds_during_harmless_load=round(cpu_control, 1),
        bystander_statuses=dict(bystander.statuses),
    )
