"""Usage loop benchmark: usage batches/s per worker process, and the Stripe meter reporter.

`.venv/bin/python -m bench.usage_bench [--batches N] [--jobs N] [--quick]` on a private
broker (or QUOTAFLOW_KAFKA_BOOTSTRAP). Prints one JSON document:

- `usage_agent`: N usage.events records already in the topic, each a pre-aggregated count
  for one customer (what the ingress writes for a tenant with one active customer per node
  and report); `usage_agent_packed`: the same N counts, 20 per record (a busy tenant's
  report). A real `quotaflow worker` process (memory store, meter reporting off) runs
  until it has committed everything, timed by its first and last state write (the
  timestamps of its `customers` changelog records, one per count); beside it, in the
  same run, a raw aiokafka consumer reads the same topic.
- `meter_reporter`: N meter jobs through `MeterReporter` + `MeterClient` with a 100 req/s
  bucket against a local fake Stripe that always accepts; sustained calls/s after the
  first second, and duplicates (identifiers accepted twice: must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from pydantic import SecretStr

from bench.common import kafka_bootstrap
from bench.worker_bench import read_topic
from quotaflow.registry import StaticTenantRegistry, dump_tenants
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from streams.meter_client import MeterClient
from streams.meter_reporter import MeterReporter
from streams.usage_agent import meter_identifier, meter_topic
from tables.tenant import Tenant, WebhookSecret

PARTITIONS = 4


def _tenant(tenant_id: str) -> Tenant:
    return Tenant(
        id=tenant_id,
        webhook_secrets=(WebhookSecret(id="s1", secret=SecretStr("whsec_bench")),),
        regions=("eu",),
        stripe_api_key=SecretStr("sk_test_bench"),
    )


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _raw_consume(bootstrap: str, topic: str, count: int) -> float:
    """Records/s of a bare aiokafka consumer reading the topic from the start (no decode)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        started = time.perf_counter()
        async with asyncio.timeout(300):
            while seen < count:
                batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
                seen += sum(len(v) for v in batch.values())
        return count / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def _committed(bootstrap: str, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        except GroupCoordinatorNotAvailableError:
            return 0  # the group is still forming: nothing committed yet
        return sum(
            meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0
        )
    finally:
        await admin.close()


# A busy tenant's edge report: 20 customers seen by one node in one report interval.
PACKED = 20


async def bench_usage_agent(bootstrap: str, batches: int, per_record: int = 1) -> dict[str, Any]:
    """`batches` customer counts, `per_record` of them in each usage.events record.

    The ingress writes one record per tenant per edge report, with one item per customer
    the node saw in that interval: 1 per record is the worst case (a tenant with a single
    active customer per node and second), larger values what a busy tenant sends.
    """
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    settings = Settings(
        kafka_bootstrap=bootstrap, topic_prefix=prefix, partitions=PARTITIONS, app_id=prefix + "app"
    )
    await ensure_topics(settings)
    tenants = [f"t{n:03d}" for n in range(100)]
    now = time.time()
    records = []
    count = batches // per_record
    for i in range(count):
        tenant = tenants[i % len(tenants)]
        items = [
            {"customer_id": f"cus_{(i * per_record + j) % 1000}", "units": 1 + (i + j) % 7}
            for j in range(per_record)
        ]
        value = {
            "batch_id": f"edge-{i % 3}:{i // 3 + 1}",
            "node_id": f"edge-{i % 3}",
            "region": "eu",
            "tenant_id": tenant,
            "sent_at": now,
            "received_at": now,
            "items": items,
        }
        records.append((tenant.encode(), orjson.dumps(value)))
    await _produce(bootstrap, settings.topics.usage_events, records)
    raw_rate = await _raw_consume(bootstrap, settings.topics.usage_events, count)

    tmp = Path(tempfile.mkdtemp(prefix="usage-bench-"))
    (tmp / "tenants.json").write_bytes(dump_tenants([_tenant(t) for t in tenants]))
    env = {
        **os.environ,
        "QUOTAFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "QUOTAFLOW_TOPIC_PREFIX": prefix,
        "QUOTAFLOW_PARTITIONS": str(PARTITIONS),
        "QUOTAFLOW_APP_ID": settings.app_id,
        "QUOTAFLOW_DATA_DIR": str(tmp / "data"),
        "QUOTAFLOW_STORE": "memory://",
        "QUOTAFLOW_TENANTS_FILE": str(tmp / "tenants.json"),
        "QUOTAFLOW_STRIPE_FETCH": "false",
        "QUOTAFLOW_METER_ENABLED": "false",
        "QUOTAFLOW_LOG_LEVEL": "WARNING",
    }
    log = (tmp / "worker.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quotaflow.commands.cli", "worker", env=env, stdout=log, stderr=log
    )
    try:
        done = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = await _committed(bootstrap, settings.app_id, settings.topics.usage_events)
            if done >= count:
                break
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        async with asyncio.timeout(30):
            await proc.wait()
        log.close()
    if done < count:
        return {"error": f"worker committed {done} of {count}", "log": str(tmp / "worker.log")}
    # The agent writes each customer's state once per item: the changelog's timestamps
    # (the worker's clock at each write) time the work itself, which committed offsets,
    # advancing once per commit interval, cannot for short runs.
    changelog = f"{settings.app_id}-customers-changelog"
    writes = await read_topic(bootstrap, changelog, partitions=PARTITIONS)
    stamps = sorted(r.timestamp for r in writes)
    span = (stamps[-1] - stamps[0]) / 1000.0
    records_per_s = (len(writes) - 1) / per_record / span
    return {
        "batches": count * per_record,
        "batches_per_record": per_record,
        "records": count,
        "partitions": PARTITIONS,
        "worker_batches_per_s": round(records_per_s * per_record),
        "worker_records_per_s": round(records_per_s),
        "raw_aiokafka_records_per_s": round(raw_rate),
        "ratio_to_raw": round(records_per_s / raw_rate, 3),
    }


async def bench_meter_reporter(bootstrap: str, jobs: int, rate: float) -> dict[str, Any]:
    accepted: dict[str, int] = {}
    times: list[float] = []
    all_in = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        form = await request.post()
        identifier = str(form["identifier"])
        accepted[identifier] = accepted.get(identifier, 0) + 1
        times.append(time.monotonic())
        if len(accepted) >= jobs:
            all_in.set()
        return web.Response(
            body=orjson.dumps({"object": "billing.meter_event", "identifier": identifier}),
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_post("/v1/billing/meter_events", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix, partitions=PARTITIONS)
    await ensure_topics(settings)
    records = []
    for i in range(jobs):
        customer = f"cus_{i % 200}"
        batch = f"edge-1:{i + 1}"
        job = {
            "tenant_id": "acme",
            "stripe_customer_id": customer,
            "event_name": "api_calls",
            "value": 1,
            "identifier": meter_identifier("acme", customer, "api_calls", batch),
            "timestamp": int(time.time()),
            "batch_id": batch,
        }
        records.append((f"acme/{customer}/api_calls".encode(), orjson.dumps(job)))
    await _produce(bootstrap, meter_topic(settings), records)
    reporter = MeterReporter(
        bootstrap=bootstrap,
        topic=meter_topic(settings),
        group_id=f"{prefix}meter",
        registry=lambda: StaticTenantRegistry([_tenant("acme")]),
        client=MeterClient(api_base=f"http://127.0.0.1:{port}", rates={"test": rate}),
        max_in_flight=64,
    )
    await reporter.start()
    try:
        async with asyncio.timeout(jobs / rate * 3 + 30):
            await all_in.wait()
    finally:
        await reporter.stop()
        await runner.cleanup()
    start = times[0] + 1.0
    steady = [t for t in times if t >= start]
    sustained = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
    window_max = 0
    j = 0
    for i, t in enumerate(times):
        while t - times[j] >= 1.0:
            j += 1
        window_max = max(window_max, i - j + 1)
    return {
        "jobs": jobs,
        "bucket_per_s": rate,
        "sustained_calls_per_s": round(sustained, 2),
        "of_bucket": round(sustained / rate, 4),
        "max_calls_in_any_1s": window_max,
        "duplicates": sum(n - 1 for n in accepted.values()),
        "delivered": len(accepted),
    }


async def run(batches: int, jobs: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    with kafka_bootstrap() as (bootstrap, private):
        usage = await bench_usage_agent(bootstrap, batches)
        packed = await bench_usage_agent(bootstrap, batches, PACKED)
        meter = await bench_meter_reporter(bootstrap, jobs, 100.0)
    return {
        "private_broker": private,
        "usage_agent": usage,
        "usage_agent_packed": packed,
        "meter_reporter": meter,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batches", type=int, default=30_000)
    parser.add_argument("--jobs", type=int, default=1_500)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.jobs = 2_000, 200
    print(
        orjson.dumps(asyncio.run(run(args.batches, args.jobs)), option=orjson.OPT_INDENT_2).decode()
    )


if __name__ == "__main__":
    main()
