"""The scale bench's fast fill: customer states written straight into the worker's
`customers` changelog, as the worker itself would have written them.

Pushing one event per key through a worker runs at ~1,200 keys/s, a quarter of an hour
for the issue's million keys; producing the changelog records runs at producer speed, and
what the bench measures (rebuild, restart, memory) only reads them.

The states are real: `tables.billing.apply_event` builds one per lifecycle length (1 to
`SHAPES` events of `bench.worker_bench.Workload`, the tests' Stripe factories) for a marker
customer, and each key gets one of them with the marker ids replaced by its own. What
differs from a worker-built state: `offsets` is empty (it holds stripe.events positions,
and this bench's stripe.events never held these events, so keeping them would make the
probe events look like replays) and the fingerprints hash the marker's objects (they only
matter for a snapshot that repeats the last one).

Record layout (see streams/records.py, streams/app.py): topic `<app id>-customers-changelog`,
key `tenant/customer`, value `CustomerState.model_dump_json()`, both raw bytes, no headers;
partition = the tenant's stripe.events partition (Kafka's default partitioner on the tenant
id), since the worker writes the table in the event's partition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from bench.worker_bench import PARTITIONS, Workload, make_tenants, tenant_id
from quotaflow.topicread import tenant_partition

SHAPES = 6
CUSTOMERS_PER_TENANT = 10
# Marker ids: letters and underscores, so they cannot occur inside a number or a hash.
_MARK_T, _MARK_C = 424242, 7
_MARK_TENANT = tenant_id(_MARK_T)
_MARK_PAIR = f"_{_MARK_T}_{_MARK_C}"


def changelog_topic(app_id: str) -> str:
    """Faust's name for the `customers` table's changelog."""
    return f"{app_id}-customers-changelog"


def key_of(k: int) -> tuple[int, int]:
    """(tenant index, customer index) of key number `k`: tenants = keys / 10."""
    return divmod(k, CUSTOMERS_PER_TENANT)


def shape_of(t: int, c: int) -> int:
    """How many lifecycle events customer (t, c) has had: 1..SHAPES, spread evenly."""
    return 1 + (t * 7 + c * 3) % SHAPES


def templates() -> list[str]:
    """CustomerState JSON of the marker customer after 1..SHAPES events, offsets dropped."""

    from tables.billing import QuotaPolicy, apply_event
    from tables.billing_state import CustomerState
    from tables.outcome import Source

    tenant = make_tenants(1)[0].model_copy(update={"id": _MARK_TENANT})
    out = []
    for shape in range(1, SHAPES + 1):
        workload = Workload(_MARK_T + 1, CUSTOMERS_PER_TENANT)
        state: CustomerState | None = None
        for offset in range(shape):
            _, _, body = workload.event(_MARK_T, _MARK_C)
            outcome = apply_event(
                state, orjson.loads(body), tenant=tenant, fetched=None,
                source=Source(0, offset), now=time.time(), policy=QuotaPolicy(),
            )  # fmt: skip
            if outcome.state is None:
                raise RuntimeError(f"shape {shape}: event {offset} built no state")
            state = outcome.state
        assert state is not None
        out.append(state.model_copy(update={"offsets": {}}).model_dump_json())
    return out


@dataclass(frozen=True)
class ChangelogRecord:
    partition: int
    key: bytes
    value: bytes


def records(keys: int, shapes: list[str]) -> Iterator[ChangelogRecord]:
    """Every key's changelog record, tenant by tenant."""
    partition_of: dict[int, int] = {}
    for k in range(keys):
        t, c = key_of(k)
        tenant = tenant_id(t)
        p = partition_of.get(t)
        if p is None:
            partition_of.clear()
            p = partition_of[t] = tenant_partition(tenant, PARTITIONS)
        value = shapes[shape_of(t, c) - 1].replace(_MARK_TENANT, tenant)
        value = value.replace(_MARK_PAIR, f"_{t}_{c}")
        yield ChangelogRecord(p, f"{tenant}/cus_{t}_{c}".encode(), value.encode())


def expected_last(shapes: list[str], t: int, c: int) -> Any:
    """The `last` quota update key (t, c) was written with (None if it has none)."""
    from tables.billing_state import CustomerState

    value = shapes[shape_of(t, c) - 1].replace(_MARK_TENANT, tenant_id(t))
    return CustomerState.model_validate_json(value.replace(_MARK_PAIR, f"_{t}_{c}")).last


async def write_changelog(bootstrap: str, topic: str, keys: int) -> dict[str, Any]:
    """Produces every key's state record; returns counts, bytes and the rate."""
    from aiokafka import AIOKafkaProducer

    shapes = templates()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 2**20,
    )
    async with asyncio.timeout(30):
        await producer.start()
    started = time.monotonic()
    nbytes = 0
    try:
        pending = []
        for record in records(keys, shapes):
            nbytes += len(record.key) + len(record.value)
            pending.append(
                await producer.send(topic, record.value, key=record.key, partition=record.partition)
            )
            if len(pending) >= 10_000:
                async with asyncio.timeout(120):
                    await asyncio.gather(*pending)
                pending.clear()
        async with asyncio.timeout(120):
            await asyncio.gather(*pending)
    finally:
        await producer.stop()
    seconds = max(1e-9, time.monotonic() - started)
    return {
        "records": keys,
        "seconds": round(seconds, 1),
        "records_per_s": round(keys / seconds, 1),
        "mib": round(nbytes / 2**20, 1),
        "state_bytes_by_shape": [len(s) for s in shapes],
    }
