"""Notifications bench: delivery lag from a quota transition to the tenant's receiver, and
the notifier's throughput.

Real processes on a private broker: `quotaflow worker` (snapshot mode) and `quotaflow
notifier`, delivering to a receiver in this process that verifies every delivery with the
`standardwebhooks` library (its CPU is this machine's too).

- lag: customers get a subscription (limit 100), then one usage batch each of 85 units,
  paced; each batch makes two notifications (50 % and 80 % crossed). Lag = received at the
  receiver - the notification's `timestamp` (when the worker derived the transition).
- throughput: notifications produced straight into `notifications` for many tenants (one
  endpoint each); deliveries per second from the first produce to the last receipt.

`python -m bench.notify_bench [--quick]` prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from bench.common import Proc, Report, bench_workspace, progress, summary, unique, wait_http

LIMIT = 100
UNITS = 85  # crosses 0.5 and 0.8 in one batch: two notifications per customer


def _tenants(n: int, url: str, secret: str) -> list[Any]:
    from tables.tenant import NotificationEndpoint, PlanEntry, Tenant, WebhookSecret

    endpoint = NotificationEndpoint(
        id="ep_bench", url=url, thresholds=(0.5, 0.8), secret=SecretStr(secret)
    )
    return [
        Tenant(
            id=f"t{i:04d}",
            webhook_secrets=(WebhookSecret(id="s1", secret=SecretStr(f"whsec_b{i}")),),
            regions=("eu",),
            plans={"basic": PlanEntry(quota=LIMIT)},
            notification_endpoints=(endpoint,),
        )
        for i in range(n)
    ]


Records = list[tuple[bytes, bytes, list[Any]]]


async def _produce(bootstrap: str, topic: str, records: Records, rate: float | None) -> float:
    """Produces records in order (paced at `rate`/s if given); returns when the first went."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    async with asyncio.timeout(30):
        await producer.start()
    first = time.time()
    try:
        pending = []
        for i, (key, value, headers) in enumerate(records):
            if rate is not None:
                await asyncio.sleep(max(0.0, first + i / rate - time.time()))
            pending.append(await producer.send(topic, value, key=key, headers=headers))
        async with asyncio.timeout(60):
            await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return first


def _subscriptions(tenants: list[Any], customers: int) -> list[tuple[bytes, bytes, list[Any]]]:
    from bench.worker_bench import headers
    from quotaflow.testing import stripe_objects as f

    period = (int(time.time()) - 86_400, int(time.time()) + 29 * 86_400)
    out = []
    for t in tenants:
        for c in range(customers):
            sub = f.subscription(f"sub_{c}", f"cus_{c}", "active", [(f.BASIC, 1)], period=period)
            body = f.event("customer.subscription.created", sub, event_id=f"evt_{t.id}_{c}")
            out.append(
                (
                    t.id.encode(),
                    orjson.dumps(body),
                    headers(t.id, body["id"], "customer.subscription.created"),
                )
            )
    return out


def _usage(tenants: list[Any], customers: int) -> list[tuple[bytes, bytes, list[Any]]]:
    out = []
    now = time.time()
    for c in range(customers):
        for t in tenants:
            doc = {
                "batch_id": f"bench:{c + 1}",
                "node_id": "bench",
                "region": "eu",
                "tenant_id": t.id,
                "sent_at": now,
                "received_at": now,
                "items": [{"customer_id": f"cus_{c}", "units": UNITS}],
            }
            out.append((t.id.encode(), orjson.dumps(doc), [("qf-tenant", t.id.encode())]))
    return out


def _direct(tenants: list[Any], count: int) -> list[tuple[bytes, bytes, list[Any]]]:
    from tables.notification import (
        NOTIFICATION_SCHEMA,
        Notification,
        NotificationData,
        iso_timestamp,
    )
    from wire import SCHEMA_HEADER

    out = []
    for n in range(count):
        t = tenants[n % len(tenants)]
        note = Notification(
            id=f"msg_bench_{n:08d}",
            type="quota.exhausted",
            timestamp=iso_timestamp(time.time()),
            data=NotificationData(tenant_id=t.id, customer_id=f"c{n}", stripe_customer_id="x"),
        )
        out.append((t.id.encode(), note.to_json(), [(SCHEMA_HEADER, NOTIFICATION_SCHEMA)]))
    return out


async def _wait(receiver: Any, count: int, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while len(receiver.deliveries) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {len(receiver.deliveries)} of {count} received")
        await asyncio.sleep(0.05)


async def run(
    report: Report, bootstrap: str, work: Path, tenants_n: int, customers: int, direct: int
) -> None:
    from quotaflow.commands.localkafka import free_port
    from quotaflow.commands.tenants.endpoints import new_endpoint_secret
    from quotaflow.registry import dump_tenants
    from quotaflow.settings import Settings
    from quotaflow.testing.receiver import Receiver
    from quotaflow.topics import ensure_topics

    secret = new_endpoint_secret()
    prefix = unique("notify-") + "."
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix, partitions=4)
    await ensure_topics(settings)
    async with Receiver(secret=secret) as receiver:
        tenants = _tenants(tenants_n, receiver.url, secret)
        tenants_file = work / "tenants.json"
        tenants_file.write_bytes(dump_tenants(tenants))
        port = free_port()
        env = {
            "QUOTAFLOW_KAFKA_BOOTSTRAP": bootstrap,
            "QUOTAFLOW_TOPIC_PREFIX": prefix,
            "QUOTAFLOW_PARTITIONS": "4",
            "QUOTAFLOW_APP_ID": f"{prefix}app",
            "QUOTAFLOW_DATA_DIR": str(work / "data"),
            "QUOTAFLOW_STORE": "memory://",
            "QUOTAFLOW_TENANTS_FILE": str(tenants_file),
            "QUOTAFLOW_STRIPE_FETCH": "false",
            "QUOTAFLOW_METER_ENABLED": "false",
            "QUOTAFLOW_LOG_LEVEL": "WARNING",
            "QUOTAFLOW_NOTIFY_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
            "QUOTAFLOW_NOTIFIER_PORT": str(port),
            "QUOTAFLOW_NOTIFIER_GROUP": f"{prefix}notifier",
            "QUOTAFLOW_NOTIFIER_TENANT_RATE": "10000",
        }
        worker = Proc.quotaflow(["worker"], env, work)
        notifier = Proc.quotaflow(["notifier"], env, work)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", 60, notifier)
            progress(f"subscriptions for {tenants_n}x{customers} customers")
            subs = _subscriptions(tenants, customers)
            await _produce(bootstrap, settings.topics.stripe_events, subs, None)
            from bench.common import end_offsets_total

            deadline = time.monotonic() + 120
            while await end_offsets_total(bootstrap, settings.topics.quota_updates) < len(subs):
                worker.check()
                if time.monotonic() > deadline:
                    raise TimeoutError("the worker did not publish the subscriptions")
                await asyncio.sleep(0.2)

            progress("usage batches, paced at 50/s")
            usage = _usage(tenants, customers)
            await _produce(bootstrap, settings.topics.usage_events, usage, 50.0)
            await _wait(receiver, 2 * len(usage), 180, "lag phase")
            lags = [(d.received_at - _at(d.timestamp)) * 1000 for d in receiver.deliveries]
            report["lag"] = {
                "definition": "notification timestamp (derived by the worker) -> received",
                "notifications": len(lags),
                "transition_to_received_ms": summary(lags),
            }

            progress(f"{direct} notifications straight into the topic")
            before = len(receiver.deliveries)
            first = await _produce(
                bootstrap, settings.topics.notifications, _direct(tenants, direct), None
            )
            await _wait(receiver, before + direct, 300, "throughput phase")
            last = max(d.received_at for d in receiver.deliveries[before:])
            report["throughput"] = {
                "notifications": direct,
                "tenants": tenants_n,
                "deliveries_per_s": round(direct / (last - first), 1),
                "seconds": round(last - first, 2),
            }
            report["refused_by_receiver"] = len(receiver.refused)
            report["duplicate_ids"] = len(receiver.ids()) - len(set(receiver.ids()))
        finally:
            notifier.stop()
            worker.stop()


def _at(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke test.")
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--customers", type=int, default=25)
    parser.add_argument("--direct", type=int, default=5000)
    parser.add_argument("--keep", help="Keep the work directory here.")
    args = parser.parse_args()
    if args.quick:
        args.tenants, args.customers, args.direct = 3, 3, 60
    report = Report("notify", vars(args))
    with bench_workspace(report, "notify", args.keep) as (bootstrap, work):
        asyncio.run(run(report, bootstrap, work, args.tenants, args.customers, args.direct))
    report.emit()


if __name__ == "__main__":
    main()
