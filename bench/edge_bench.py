"""Edge benchmark: in-process `check()` latency and HTTP `consume` latency on localhost.

Run: `.venv/bin/python -m bench.edge_bench` (prints JSON).

1. `QuotaCache.check()` over 1M calls on 10,000 customers: throughput from batches timed
   with perf_counter_ns, and per-call p50/p99 from individually timed samples (timer
   overhead measured and reported beside them). Beside it, the baseline a team would
   write: a dict of pydantic `QuotaUpdate` models keyed `tenant/customer`, answering with
   a dict.
2. `POST /v1/consume` on a sidecar in a child process, driven open-loop at 2,000 req/s
   from this process over keep-alive connections; p50/p99/max client-side latency.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import orjson
from aiohttp import web

from edge.cache import QuotaCache
from edge.server import build_app
from tables.quota import QuotaUpdate, Reason, quota_key
from wire import Kind, Verifier, generate_keypair

CUSTOMERS = 10_000
CALLS = 1_000_000
SAMPLES = 200_000
HTTP_RATE = 2_000
HTTP_SECONDS = 10.0


def _updates(limit: int) -> list[QuotaUpdate]:
    return [
        QuotaUpdate(
            tenant_id=f"t{i % 100}",
            customer_id=f"c{i}",
            limit=limit,
            used=0,
            remaining=limit,
            status="active",
            version=1,
            reason=Reason(kind="policy", id="bench"),
            updated_at=0.0,
        )
        for i in range(CUSTOMERS)
    ]


class BaselineCache:
    """What a team would write: pydantic models in a dict, a dict per answer."""

    def __init__(self) -> None:
        self.quotas: dict[str, QuotaUpdate] = {}

    def apply(self, update: QuotaUpdate) -> None:
        held = self.quotas.get(update.key)
        if held is None or update.version > held.version:
            self.quotas[update.key] = update

    def check(self, tenant_id: str, customer_id: str, cost: int = 1) -> dict[str, Any]:
        quota = self.quotas.get(quota_key(tenant_id, customer_id))
        if quota is None:
            return {"allowed": False, "remaining": None, "reason": "unknown_customer"}
        if quota.status in ("blocked", "exhausted"):
            return {"allowed": False, "remaining": 0, "reason": quota.status}
        if quota.remaining is None:
            return {"allowed": True, "remaining": None, "reason": "ok"}
        allowed = quota.remaining >= cost
        return {
            "allowed": allowed,
            "remaining": quota.remaining - cost if allowed else quota.remaining,
            "reason": "ok" if allowed else "insufficient",
        }

    def consume(self, tenant_id: str, customer_id: str, cost: int = 1) -> dict[str, Any]:
        answer = self.check(tenant_id, customer_id, cost)
        if answer["allowed"] and answer["remaining"] is not None:
            key = quota_key(tenant_id, customer_id)
            quota = self.quotas[key]
            self.quotas[key] = quota.model_copy(
                update={"used": quota.used + cost, "remaining": answer["remaining"]}
            )
        return answer


def _percentile(sorted_values: list[int], q: float) -> float:
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def _measure(
    check: Callable[[str, str, int], object], keys: list[tuple[str, str]]
) -> dict[str, Any]:
    n = len(keys)
    clock = time.perf_counter_ns
    # Throughput: batches of 1,000 calls, one clock read per batch.
    batch_ns: list[int] = []
    for start in range(0, CALLS, 1000):
        chunk = [keys[(start + j) % n] for j in range(1000)]
        t0 = clock()
        for tenant, customer in chunk:
            check(tenant, customer, 1)
        batch_ns.append(clock() - t0)
    # Latency: every call timed on its own (includes one clock read's overhead).
    samples: list[int] = []
    for i in range(SAMPLES):
        tenant, customer = keys[i % n]
        t0 = clock()
        check(tenant, customer, 1)
        samples.append(clock() - t0)
    samples.sort()
    per_call = sorted(b / 1000 for b in batch_ns)
    return {
        "calls": CALLS,
        "mean_us": round(sum(batch_ns) / CALLS / 1000, 3),
        "batch_p50_us_per_call": round(statistics.median(per_call) / 1000, 3),
        "calls_per_second": round(CALLS / (sum(batch_ns) / 1e9)),
        "p50_us": round(_percentile(samples, 0.50) / 1000, 3),
        "p99_us": round(_percentile(samples, 0.99) / 1000, 3),
        "p999_us": round(_percentile(samples, 0.999) / 1000, 3),
        "max_us": round(samples[-1] / 1000, 3),
    }


def _timer_overhead_us() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(100_000):
        t0 = clock()
        samples.append(clock() - t0)
    samples.sort()
    return round(_percentile(samples, 0.5) / 1000, 3)


def bench_check() -> dict[str, Any]:
    updates = _updates(limit=10**12)
    cache = QuotaCache(regions=("bench",))
    baseline = BaselineCache()
    for u in updates:
        cache.apply(u, "bench")
        baseline.apply(u)
    keys = [(u.tenant_id, u.customer_id) for u in updates]
    random.Random(7).shuffle(keys)
    return {
        "timer_overhead_p50_us": _timer_overhead_us(),
        "quotaflow_check": _measure(cache.check, keys),
        "baseline_pydantic_dict_check": _measure(baseline.check, keys),
        "quotaflow_consume": _measure(cache.consume, keys),
        "baseline_pydantic_dict_consume": _measure(baseline.consume, keys),
    }


# -- HTTP --------------------------------------------------------------------------


def _serve(port: int, ready: Connection) -> None:
    async def main() -> None:
        cache = QuotaCache(regions=("bench",))
        for u in _updates(limit=10**12):
            cache.apply(u, "bench")
        runner = web.AppRunner(
            build_app(cache, Verifier(Kind.PUSH, [generate_keypair()[1]]), region="bench"),
            access_log=None,
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.send(os.getpid())
        await asyncio.Event().wait()

    asyncio.run(main())


async def _connection(
    port: int, jobs: asyncio.Queue[tuple[float, bytes] | None], out: list[tuple[float, float]]
) -> None:
    """One keep-alive HTTP/1.1 connection; a minimal client so the load generator is not
    the bottleneck on a 2-core machine (aiohttp's client costs more CPU than the server)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (job := await jobs.get()) is not None:
            scheduled, body = job
            sent = time.perf_counter()
            writer.write(
                b"POST /v1/consume HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                payload = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200") or b'"allowed":true' not in payload:
                raise RuntimeError(f"unexpected answer: {head[:20]!r} {payload[:80]!r}")
            done = time.perf_counter()
            out.append((done - scheduled, done - sent))
            jobs.task_done()
    finally:
        writer.close()


async def _drive(port: int) -> dict[str, Any]:
    bodies = [
        orjson.dumps({"tenant_id": f"t{i % 100}", "customer_id": f"c{i}", "cost": 1})
        for i in range(CUSTOMERS)
    ]
    connections = 16
    jobs: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    out: list[tuple[float, float]] = []
    workers = [asyncio.create_task(_connection(port, jobs, out)) for _ in range(connections)]
    for i in range(500):  # warm-up
        jobs.put_nowait((time.perf_counter(), bodies[i]))
    async with asyncio.timeout(30):
        await jobs.join()
    out.clear()
    total = int(HTTP_RATE * HTTP_SECONDS)
    start = time.perf_counter()
    for i in range(total):
        scheduled = start + i / HTTP_RATE
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        jobs.put_nowait((scheduled, bodies[i % CUSTOMERS]))
    for _ in workers:
        jobs.put_nowait(None)
    async with asyncio.timeout(60):
        await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    # From the scheduled send time (counts queueing in the client: no coordinated omission)
    # and from the actual write (the server's share).
    scheduled_ns = sorted(int(a * 1e9) for a, _ in out)
    sent_ns = sorted(int(b * 1e9) for _, b in out)
    return {
        "target_rps": HTTP_RATE,
        "achieved_rps": round(len(out) / elapsed),
        "requests": len(out),
        "connections": connections,
        "p50_ms": round(_percentile(scheduled_ns, 0.50) / 1e6, 3),
        "p99_ms": round(_percentile(scheduled_ns, 0.99) / 1e6, 3),
        "max_ms": round(scheduled_ns[-1] / 1e6, 3),
        "from_write_p50_ms": round(_percentile(sent_ns, 0.50) / 1e6, 3),
        "from_write_p99_ms": round(_percentile(sent_ns, 0.99) / 1e6, 3),
    }


def bench_http() -> dict[str, Any]:
    from quotaflow.localkafka import free_port

    port = free_port()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(port, child), daemon=True)
    server.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("edge server did not start")
        parent.recv()
        return asyncio.run(_drive(port))
    finally:
        server.terminate()
        server.join(10)


def main() -> None:
    result = {"check": bench_check(), "http_consume": bench_http(), "cpus": os.cpu_count()}
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
