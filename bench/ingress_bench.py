"""Ingress benchmark: verified Stripe webhooks end to end (request -> broker ack -> 200).

Run: `.venv/bin/python -m bench.ingress_bench [--duration 10] [--profile]`, against the broker
in QUOTAFLOW_KAFKA_BOOTSTRAP (default 127.0.0.1:19092). Prints one JSON document.

Processes, so that no side steals CPU from the server it measures:
- the ingress (`ingress.server.serve`, access logs on, JSON-formatted to /dev/null);
- the baseline: what a team would write by hand, a stdlib `ThreadingHTTPServer` whose
  handler calls `stripe.Webhook.construct_event` and then produces and flushes per request.
  There is no kafka-python here, so the "synchronous producer" is aiokafka on one event
  loop in a dedicated thread; each handler thread submits `send()` + `flush()` with
  `run_coroutine_threadsafe` and blocks on the result (acks=all, idempotence on, as ours);
- the load generator: a lean keep-alive HTTP/1.1 client on raw asyncio protocols (an
  aiohttp client costs more CPU per request than the server under test, and with 2 cores
  it would saturate first). Latency at a fixed rate is measured from each request's
  scheduled send time, so queueing in the client counts against the server (no
  coordinated omission).

Both servers see the same 1,200 tenants and the same 2-8 KiB bodies of realistic
`customer.subscription.updated` / `invoice.paid` events, signed with each tenant's secret.

The usage route (`POST /v1/usage`, what every edge node reports through) gets its own
closed-loop phase per worker count: distinct usage batches of `USAGE_ITEMS` customers over
a few tenants each, signed with an edge key (Ed25519), each published per tenant with
acks=all before its 200; `usage_batches_per_s` counts batches answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import multiprocessing as mp
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any

import orjson

from bench.common import cdf
from quotaflow.testing.harness import create_topics, free_port, wait_http, wait_port

N_TENANTS = 1200
BODY_POOL = 3000
USAGE_ITEMS = 20  # customers per usage batch (a node's second of traffic)
USAGE_POOL = 40_000  # distinct batches: a re-sent signature would be refused as a replay
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- tenants and events ------------------------------------------------------------------


def tenant_id(i: int) -> str:
    return f"tenant-{i:05d}"


def tenant_secret(i: int) -> str:
    return f"whsec_bench_{i:05d}_{'k' * 24}"


def make_registry(n: int) -> Any:
    from quotaflow.registry import StaticTenantRegistry
    from tables.tenant import Tenant, WebhookSecret

    return StaticTenantRegistry(
        Tenant(
            id=tenant_id(i),
            webhook_secrets=(WebhookSecret(id=f"s{i}", secret=tenant_secret(i)),),
            regions=("eu",),
        )
        for i in range(n)
    )


def event_body(rng: random.Random, seq: int) -> bytes:
    """A Stripe-shaped event of 2-8 KiB: a subscription with items, metadata, previous attrs."""
    target = rng.randint(2048, 8192)
    customer = f"cus_{rng.getrandbits(48):012x}"
    items = []
    for n in range(rng.randint(1, 4)):
        items.append(
            {
                "id": f"si_{rng.getrandbits(48):012x}",
                "object": "subscription_item",
                "current_period_start": 1_750_000_000,
                "current_period_end": 1_752_592_000,
                "price": {
                    "id": f"price_{rng.getrandbits(40):010x}",
                    "object": "price",
                    "lookup_key": f"plan_{n}",
                    "product": f"prod_{rng.getrandbits(40):010x}",
                    "recurring": {"interval": "month", "usage_type": "licensed"},
                    "unit_amount": 4900,
                    "currency": "usd",
                    "metadata": {},
                },
                "quantity": rng.randint(1, 20),
                "metadata": {},
            }
        )
    doc: dict[str, Any] = {
        "id": f"evt_{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}_{seq}",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": 1_750_000_000 + seq,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": f"req_{rng.getrandbits(48):012x}", "idempotency_key": str(uuid.uuid4())},
        "type": rng.choice(["customer.subscription.updated", "invoice.paid"]),
        "data": {
            "object": {
                "id": f"sub_{rng.getrandbits(48):012x}",
                "object": "subscription",
                "customer": customer,
                "status": "active",
                "cancel_at_period_end": False,
                "collection_method": "charge_automatically",
                "items": {"object": "list", "data": items, "has_more": False},
                "metadata": {"account_ref": customer, "note": ""},
            },
            "previous_attributes": {"status": "trialing"},
        },
    }
    body = orjson.dumps(doc)
    pad = target - len(body)
    if pad > 0:
        doc["data"]["object"]["metadata"]["note"] = "x" * pad
        body = orjson.dumps(doc)
    return body


def build_requests(n_tenants: int, count: int, seed: int) -> list[bytes]:
    """`count` raw HTTP/1.1 requests for random tenants, signed now."""
    rng = random.Random(seed)
    now = int(time.time())
    out = []
    for seq in range(count):
        i = rng.randrange(n_tenants)
        body = event_body(rng, seq)
        sig = hmac.new(tenant_secret(i).encode(), b"%d." % now + body, "sha256").hexdigest()
        head = (
            f"POST /v1/webhooks/stripe/{tenant_id(i)} HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\n"
            "User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Stripe-Signature: t={now},v1={sig}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


def build_usage_requests(n_tenants: int, count: int, seed: int, private_key: str) -> list[bytes]:
    """`count` distinct signed usage reports of one edge node (region eu), raw HTTP/1.1."""
    from wire import Kind, Signer

    signer = Signer(Kind.USAGE, [private_key])
    rng = random.Random(seed)
    incarnation = f"{rng.getrandbits(64):016x}"
    out = []
    for seq in range(1, count + 1):
        tenants = [tenant_id(rng.randrange(n_tenants)) for _ in range(4)]
        items = [
            {"tenant_id": tenants[i % 4], "customer_id": f"cus_{rng.randrange(10**6)}", "units": 1}
            for i in range(USAGE_ITEMS)
        ]
        body = orjson.dumps(
            {
                "batch_id": f"bench-node:{incarnation}:{seq}",
                "node_id": "bench-node",
                "region": "eu",
                "sent_at": time.time(),
                "items": items,
            }
        )
        head = (
            "POST /v1/usage HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nX-Quotaflow-Region: eu\r\n"
            f"X-Quotaflow-Signature: {signer.header(body)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


# --- load generator (its own process) ----------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection, one request at a time; parses status and Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        idx = head.find(b"content-length:")
        length = int(head[idx + 15 : head.find(b"\r\n", idx) if b"\r\n" in head[idx:] else None])
        if len(self.buf) < end + 4 + length:
            return
        status = int(self.buf[9:12])
        del self.buf[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    async def request(self, raw: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


async def _connect(port: int) -> _Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
    return conn


def _summary(latencies: list[float], statuses: dict[int, int], elapsed: float) -> dict[str, Any]:
    latencies.sort()

    def pct(p: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3)

    ok = statuses.get(200, 0)
    return {
        "requests": sum(statuses.values()),
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(elapsed, 3),
        "webhooks_per_s": round(ok / elapsed, 1) if elapsed else 0.0,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "cdf": cdf(latencies, "ms", 1000.0),
    }


async def _fixed_rate(port: int, reqs: list[bytes], rate: float, duration: float) -> dict[str, Any]:
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(128):
        pool.put_nowait(await _connect(port))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    total = int(rate * duration)
    loop = asyncio.get_running_loop()

    async def one(raw: bytes, scheduled: float) -> None:
        conn = await pool.get()
        try:
            status = await conn.request(raw)
        except ConnectionError:
            status = 0
            conn = await _connect(port)
        pool.put_nowait(conn)
        latencies.append(loop.time() - scheduled)
        statuses[status] = statuses.get(status, 0) + 1

    tasks = []
    t0 = loop.time() + 0.05
    for i in range(total):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(reqs[i % len(reqs)], scheduled)))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration + 30):
            await asyncio.gather(*tasks)
    elapsed = loop.time() - t0
    result = _summary(latencies, statuses, elapsed)
    result["unfinished"] = sum(1 for t in tasks if not t.done())
    result["target_rate"] = rate
    for t in tasks:
        t.cancel()
    return result


async def _closed_loop(
    port: int, reqs: list[bytes], concurrency: int, duration: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    counter = iter(range(10**9))

    async def worker() -> None:
        conn = await _connect(port)
        while loop.time() < deadline:
            raw = reqs[next(counter) % len(reqs)]
            start = loop.time()
            try:
                status = await conn.request(raw)
            except ConnectionError:
                status = 0
                conn = await _connect(port)
            latencies.append(loop.time() - start)
            statuses[status] = statuses.get(status, 0) + 1
        assert conn.transport is not None
        conn.transport.close()

    t0 = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result = _summary(latencies, statuses, loop.time() - t0)
    result["concurrency"] = concurrency
    return result


def _client_main(
    port: int,
    mode: str,
    n_tenants: int,
    param: float,
    duration: float,
    out: Connection,
    usage_key: str | None = None,
) -> None:
    if mode == "usage":
        assert usage_key is not None
        reqs = build_usage_requests(n_tenants, USAGE_POOL, seed=int(param), private_key=usage_key)
    else:
        reqs = build_requests(n_tenants, BODY_POOL, seed=int(param) + len(mode))
    sizes = [len(r) for r in reqs]
    if mode == "rate":
        result = asyncio.run(_fixed_rate(port, reqs, param, duration))
    else:
        result = asyncio.run(_closed_loop(port, reqs, int(param), duration))
    result["mean_request_bytes"] = round(sum(sizes) / len(sizes))
    out.send(result)


# --- servers (their own processes) -------------------------------------------------------


def _proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return cpu, rss


def _serve_ingress(
    settings_kwargs: dict[str, Any], n_tenants: int, profile: str | None, reuse_port: bool = False
) -> None:
    from ingress.server import serve
    from quotaflow.logs import JsonFormatter
    from quotaflow.settings import Settings

    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    settings = Settings(**settings_kwargs)
    registry = make_registry(n_tenants)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if profiler is not None:
            loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
        await serve(settings, registry, stop, reuse_port=reuse_port)

    asyncio.run(run())
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)


def _serve_baseline(bootstrap: str, topic: str, port: int, n_tenants: int) -> None:
    """The hand-written baseline: construct_event + produce-and-flush per request."""
    import stripe
    from aiokafka import AIOKafkaProducer

    secrets = {tenant_id(i): tenant_secret(i) for i in range(n_tenants)}
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def make_producer() -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        return producer

    producer = asyncio.run_coroutine_threadsafe(make_producer(), loop).result(30)

    async def produce_and_flush(key: bytes, value: bytes) -> None:
        await producer.send(topic, value=value, key=key)
        await producer.flush()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            tid = self.path.rsplit("/", 1)[-1]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            secret = secrets.get(tid)
            if secret is None:
                self._answer(404, b'{"error":"unknown tenant"}')
                return
            try:
                event = stripe.Webhook.construct_event(
                    body, self.headers.get("Stripe-Signature"), secret
                )
            except (ValueError, stripe.SignatureVerificationError):
                self._answer(400, b'{"error":"bad signature"}')
                return
            try:
                asyncio.run_coroutine_threadsafe(
                    produce_and_flush(tid.encode(), body), loop
                ).result(5)
            except Exception:  # noqa: BLE001 - the baseline answers 503 on any produce failure
                self._answer(503, b'{"error":"kafka"}')
                return
            self._answer(200, b'{"id":"%s"}' % event.id.encode())

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    asyncio.run_coroutine_threadsafe(producer.stop(), loop).result(10)


# --- orchestration -----------------------------------------------------------------------


def _phase(
    ctx: Any,
    pid: int | list[int],
    port: int,
    mode: str,
    n: int,
    param: float,
    duration: float,
    before: Callable[[], None] | None = None,
    usage_key: str | None = None,
) -> dict[str, Any]:
    """Runs one load phase in a client process; adds the server's CPU and RSS over it
    (summed over its processes when `pid` is a list: the workers of one port)."""
    pids = pid if isinstance(pid, list) else [pid]
    recv, send = ctx.Pipe(duplex=False)
    client = ctx.Process(
        target=_client_main, args=(port, mode, n, param, duration, send, usage_key)
    )
    client.start()
    # Requests are built (and signed) before load starts: leave the client that time
    # (Ed25519 signs ~20,000 usage batches a second).
    time.sleep(1.0 + (USAGE_POOL / 15_000 if mode == "usage" else BODY_POOL / 4000))
    if before is not None:
        before()
    cpu0 = sum(_proc_usage(p)[0] for p in pids)
    t0 = time.monotonic()
    result: dict[str, Any] = recv.recv()
    wall = time.monotonic() - t0
    usage = [_proc_usage(p) for p in pids]
    cpu1, rss = sum(u[0] for u in usage), sum(u[1] for u in usage)
    client.join(30)
    result["server_cpu_percent"] = round(100 * (cpu1 - cpu0) / wall, 1)
    result["server_rss_mib"] = round(rss / 2**20, 1)
    return result


def _measure_ingress(
    ctx: Any,
    bootstrap: str,
    prefix: str,
    n: int,
    dur: float,
    args: argparse.Namespace,
    workers: int,
    key: str,
) -> dict[str, Any]:
    """Fixed-rate and max phases against `workers` ingress processes sharing one port."""
    from wire import generate_keypair

    port = free_port()
    usage_private, usage_public = generate_keypair()
    settings_kwargs = {
        "kafka_bootstrap": bootstrap,
        "topic_prefix": prefix,
        "ingress_host": "127.0.0.1",
        "ingress_port": port,
        "ingress_access_log_sample": args.log_sample,
        "edge_verify_keys": {"eu": [usage_public]},
    }
    profile = args.profile if workers == 1 else None
    servers = [
        ctx.Process(target=_serve_ingress, args=(settings_kwargs, n, profile, workers > 1))
        for _ in range(workers)
    ]
    report: dict[str, Any] = {}
    for server in servers:
        server.start()
    try:
        pids = [s.pid for s in servers if s.pid is not None]
        wait_http(f"http://127.0.0.1:{port}/readyz")
        time.sleep(1.0 if workers > 1 else 0.0)  # every worker's producer connected
        report[f"{key}_idle_rss_mib"] = round(sum(_proc_usage(p)[1] for p in pids) / 2**20, 1)
        _phase(ctx, pids, port, "rate", n, 500, 3)  # warm-up: connections, metadata, caches
        report[f"{key}_fixed_rate"] = _phase(ctx, pids, port, "rate", n, args.rate, dur)
        start_profile = (lambda: os.kill(pids[0], signal.SIGUSR1)) if profile else None
        report[f"{key}_max"] = _phase(
            ctx, pids, port, "closed", n, args.concurrency, dur, before=start_profile
        )
        usage = _phase(
            ctx, pids, port, "usage", n, args.usage_concurrency, dur, usage_key=usage_private
        )
        usage["usage_batches_per_s"] = usage.pop("webhooks_per_s")
        usage["items_per_batch"] = USAGE_ITEMS
        report[f"{key}_usage_max"] = usage
    finally:
        for server in servers:
            if server.pid is not None:
                os.kill(server.pid, signal.SIGTERM)
        for server in servers:
            server.join(30)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tenants", type=int, default=N_TENANTS)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--usage-concurrency",
        type=int,
        default=16,
        help="concurrent usage reports (edge nodes each send one batch at a time)",
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the ingress in the max phase")
    parser.add_argument(
        "--workers",
        default="1,2",
        help="ingress worker counts to measure, comma-separated (SO_REUSEPORT processes)",
    )
    parser.add_argument(
        "--log-sample",
        type=float,
        default=float(os.environ.get("QUOTAFLOW_INGRESS_ACCESS_LOG_SAMPLE", "1")),
        help="QUOTAFLOW_INGRESS_ACCESS_LOG_SAMPLE of the ingress (default: that variable, "
        "else 1: every 2xx is logged)",
    )
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]

    bootstrap = os.environ.get("QUOTAFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    ours_topic, base_topic = f"{prefix}stripe.events", f"{prefix}baseline.events"
    topics = [ours_topic, base_topic, f"{prefix}usage.events"]
    asyncio.run(create_topics(bootstrap, [(t, 8, {}) for t in topics]))
    ctx = mp.get_context("spawn")
    n, dur = args.tenants, args.duration
    report: dict[str, Any] = {
        "bootstrap": bootstrap,
        "tenants": n,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "phase_seconds": dur,
        "access_log_sample": args.log_sample,
    }

    for workers in worker_counts:
        key = "ingress" if workers == 1 else f"ingress_{workers}_workers"
        report.update(_measure_ingress(ctx, bootstrap, prefix, n, dur, args, workers, key))

    if not args.skip_baseline:
        bport = free_port()
        base = ctx.Process(target=_serve_baseline, args=(bootstrap, base_topic, bport, n))
        base.start()
        try:
            assert base.pid is not None
            wait_port(bport)
            _phase(ctx, base.pid, bport, "rate", n, 200, 3)
            report["baseline_fixed_rate"] = _phase(ctx, base.pid, bport, "rate", n, args.rate, dur)
            report["baseline_max"] = _phase(
                ctx, base.pid, bport, "closed", n, args.concurrency, dur
            )
        finally:
            if base.pid is not None:
                os.kill(base.pid, signal.SIGTERM)
            base.join(30)
            if base.is_alive():
                base.kill()
        theirs = report["baseline_max"]["webhooks_per_s"]
        for workers in worker_counts:
            key = "ingress" if workers == 1 else f"ingress_{workers}_workers"
            ours = report[f"{key}_max"]["webhooks_per_s"]
            suffix = "" if workers == 1 else f"_{workers}_workers"
            report[f"speedup_max_throughput{suffix}"] = round(ours / theirs, 2) if theirs else None

    if args.profile:
        import pstats

        stats = pstats.Stats(args.profile)
        stats.sort_stats("tottime")
        report["profile_file"] = args.profile
        stats.print_stats(30)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
