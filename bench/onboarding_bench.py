"""Onboarding latency: from `TenantWriter.add` returning to the ingress answering 200 to the
new tenant's first signed webhook, while other tenants' webhooks flow.

Run: `.venv/bin/python -m bench.onboarding_bench [--count 100] [--background-rate 200]`
against the broker in QUOTAFLOW_KAFKA_BOOTSTRAP (default 127.0.0.1:19092). Prints JSON.

One process: a writer (as `quotaflow tenants add` or the admin API uses it), an ingress
(`ingress.server.serve`) with its own `TopicTenantRegistry` following the `tenants` topic,
and a client that, right after `add` returns, sends the new tenant's signed webhook every
5 ms until it is answered 200 (404 before the ingress knows the tenant). Background
traffic: signed webhooks for 20 existing tenants at a fixed rate. Fresh topic prefix per run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import os
import statistics
import time
import uuid
from hashlib import sha256

import aiohttp
import orjson

from bench.common import cdf
from ingress.server import serve
from quotaflow.commands.localkafka import free_port
from quotaflow.commands.tenants.audit import ensure_audit_topic
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.settings import Settings
from quotaflow.tenants.keyring import LocalKeyring
from quotaflow.tenants.topic_registry import TopicTenantRegistry
from quotaflow.topics import ensure_topics
from wire.signing import generate_keypair


def _doc(tenant_id: str) -> dict[str, object]:
    return {
        "id": tenant_id,
        "regions": ["eu"],
        "webhook_secrets": [{"id": "s1", "secret": f"whsec_{os.urandom(16).hex()}"}],
        "stripe_api_key": f"rk_test_{os.urandom(12).hex()}",
        "plans": {"pro": {"quota": 1000}},
    }


def _signed(secret: str, n: int) -> tuple[bytes, str]:
    body = orjson.dumps(
        {
            "id": f"evt_{n}_{uuid.uuid4().hex[:12]}",
            "object": "event",
            "type": "customer.subscription.updated",
            "livemode": False,
            "created": int(time.time()),
            "data": {"object": {"id": "sub_1", "object": "subscription", "customer": "cus_1"}},
        }
    )
    t = int(time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, sha256).hexdigest()
    return body, f"t={t},v1={mac}"


async def _post(session: aiohttp.ClientSession, url: str, secret: str, n: int) -> int:
    body, header = _signed(secret, n)
    async with session.post(
        url,
        data=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=5),
    ) as response:
        await response.read()
        return response.status


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(count: int, background_rate: float) -> dict[str, object]:
    bootstrap = os.environ.get("QUOTAFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    port = free_port()
    settings = Settings(
        kafka_bootstrap=bootstrap,
        topic_prefix=f"bench-onb-{uuid.uuid4().hex[:8]}.",
        partitions=2,
        ingress_port=port,
        tenants_file=None,
        tenant_signing_keys=[generate_keypair()[0]],  # the bench is its own admin tool
    )
    await ensure_topics(settings)
    await ensure_audit_topic(settings)
    ring = LocalKeyring({"k1": os.urandom(32)})
    writer_registry = TopicTenantRegistry(settings, ring)
    await writer_registry.start()
    writer = TenantWriter(settings, ring, writer_registry)
    await writer.start()
    ingress_registry = TopicTenantRegistry(settings, ring)
    await ingress_registry.start()
    stop = asyncio.Event()
    ingress = asyncio.create_task(serve(settings, ingress_registry, stop))
    base = f"http://127.0.0.1:{port}/v1/webhooks/stripe"
    background: list[float] = []
    latencies: list[float] = []
    attempts: list[int] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(200):  # wait for the ingress to listen
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        break
            await asyncio.sleep(0.05)
        existing = []
        for i in range(20):
            doc = _doc(f"bg-{i}")
            await writer.add(doc, "bench")
            existing.append((doc["id"], doc["webhook_secrets"][0]["secret"]))  # type: ignore[index]

        async def traffic() -> None:
            n, interval, next_at = 0, 1.0 / background_rate, time.perf_counter()
            while True:
                tenant_id, secret = existing[n % len(existing)]
                n += 1
                started = time.perf_counter()
                status = await _post(session, f"{base}/{tenant_id}", secret, n)
                if status == 200:
                    background.append(time.perf_counter() - started)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

        flowing = asyncio.create_task(traffic())
        began = time.perf_counter()
        try:
            for i in range(count):
                doc = _doc(f"new-{i}")
                secret = doc["webhook_secrets"][0]["secret"]  # type: ignore[index]
                await writer.add(doc, "bench")
                returned = time.perf_counter()
                tries = 0
                while True:
                    tries += 1
                    if await _post(session, f"{base}/new-{i}", secret, i) == 200:
                        break
                    await asyncio.sleep(0.005)
                latencies.append(time.perf_counter() - returned)
                attempts.append(tries)
        finally:
            elapsed = time.perf_counter() - began
            flowing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flowing
    stop.set()
    await ingress
    await ingress_registry.stop()
    await writer.stop()
    await writer_registry.stop()
    ms = [x * 1000 for x in latencies]
    return {
        "benchmark": "onboarding",
        "definition": "tenants add returned -> first signed webhook answered 200 by the ingress",
        "onboardings": count,
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(_pct(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
        "cdf": cdf(sorted(ms)),
        "first_try_200": sum(1 for a in attempts if a == 1),
        "target_p99_ms": 1000,
        "background_webhooks": len(background),
        "background_rate_target_per_s": background_rate,
        "background_rate_achieved_per_s": round(len(background) / elapsed, 1),
        "background_p99_ms": round(_pct([b * 1000 for b in background], 0.99), 2)
        if background
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--background-rate", type=float, default=200.0)
    args = parser.parse_args()
    print(
        orjson.dumps(
            asyncio.run(run(args.count, args.background_rate)), option=orjson.OPT_INDENT_2
        ).decode()
    )


if __name__ == "__main__":
    main()
