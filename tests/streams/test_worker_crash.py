"""Exactly once in effect: SIGKILL the worker again and again, the result does not change.

Faust commits offsets every half second and writes the changelog before that, so a
killed worker reprocesses events whose effects are already stored. The state's own
guards must make that harmless: the last quota per customer after five kills equals an
uninterrupted run's, version for version.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from quotaflow.envelope import Envelope
from quotaflow.ops.lag import Lag, consumer_lag
from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from tables.quota import QuotaUpdate
from tests.kafkautil import produce, read_all
from tests.processes import components, start
from tests.tables.factories import BASIC, PRO, TOPUP, event, invoice, make_tenant, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

PERIOD = (1_767_225_600, 1_769_904_000)
CUSTOMERS = 40


def _lifecycle(n: int) -> list[dict[str, Any]]:
    cus, sub = f"cus_{n}", f"sub_{n}"
    steps = [
        ("customer.subscription.created", "trialing", [(BASIC, 1)]),
        ("customer.subscription.updated", "active", [(BASIC, 1)]),
        ("customer.subscription.updated", "active", [(BASIC, 1 + n % 4)]),
        ("customer.subscription.updated", "past_due", [(BASIC, 1 + n % 4)]),
        ("customer.subscription.updated", "active", [(PRO, 1)]),
    ]
    if n % 3 == 0:
        steps.append(("customer.subscription.deleted", "canceled", [(PRO, 1)]))
    events = [
        event(kind, subscription(sub, cus, status, items, period=PERIOD), created=PERIOD[0] + i)
        for i, (kind, status, items) in enumerate(steps)
    ]
    # Top-ups add units: applying one twice would show in the final limit.
    for k in range(n % 3):
        paid = invoice(
            f"in_{n}_{k}", cus, subscription_id=None, lines=[(TOPUP, 1)], paid_at=PERIOD[0] + 10 + k
        )
        events.insert(2 + k, event("invoice.paid", paid, created=PERIOD[0] + 10 + k))
    return events


def _records() -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    lifecycles = [_lifecycle(n) for n in range(CUSTOMERS)]
    events = []
    while any(lifecycles):  # interleave customers, keep each one's order
        for lifecycle in lifecycles:
            if lifecycle:
                events.append(lifecycle.pop(0))
    tenant_of = ("acme", "globex")
    out = []
    for i, body in enumerate(events):
        tenant = tenant_of[int(str(body["data"]["object"]["customer"])[4:]) % 2]
        env = Envelope(tenant, str(body["id"]), str(body["type"]), False, time.time(), "s1")
        out.append((tenant.encode(), orjson.dumps(body), env.headers()))
        if i % 7 == 0:  # Stripe redelivers some events
            out.append((tenant.encode(), orjson.dumps(body), env.headers()))
    return out


def _env(settings: Settings, tenants_file: Path, data: Path) -> dict[str, str]:
    return {
        "QUOTAFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "QUOTAFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "QUOTAFLOW_PARTITIONS": str(settings.partitions),
        "QUOTAFLOW_APP_ID": settings.app_id,
        "QUOTAFLOW_DATA_DIR": str(data),
        "QUOTAFLOW_STORE": "rocksdb://",
        "QUOTAFLOW_TENANTS_FILE": str(tenants_file),
        "QUOTAFLOW_STRIPE_FETCH": "false",
        "QUOTAFLOW_LOG_LEVEL": "INFO",
        # Commit rarely so that every kill leaves processed-but-uncommitted events behind.
        "QUOTAFLOW_COMMIT_INTERVAL": "5",
        # Static membership: the restarted worker takes over the killed one's partitions
        # at once instead of waiting a session timeout for it to leave the group.
        "QUOTAFLOW_WORKER_ID": "worker-0",
    }


def _final(updates: list[Any]) -> tuple[dict[str, tuple[object, ...]], int]:
    last: dict[str, QuotaUpdate] = {}
    for record in updates:
        update = QuotaUpdate.from_json(record.value)
        held = last.get(update.key)
        assert held is None or update.version >= held.version, "a version went backwards"
        last[update.key] = update
    final: dict[str, tuple[object, ...]] = {
        key: (u.limit, u.used, u.status, u.period_start, u.period_end, u.version, u.reason.id)
        for key, u in last.items()
    }
    return final, len(updates)


async def _settle(settings: Settings, timeout: float = 120) -> list[Any]:
    """Waits until the worker has committed every stripe.events record, then reads."""
    deadline = time.monotonic() + timeout
    behind: list[Lag] = []
    while time.monotonic() < deadline:
        rows = await consumer_lag(settings, group=settings.app_id)
        source = [r for r in rows if r.topic == settings.topics.stripe_events]
        behind = [r for r in source if r.lag]
        if source and not behind:
            return await read_all(settings.kafka_bootstrap, settings.topics.quota_updates)
        await asyncio.sleep(1.0)
    raise AssertionError(f"the worker did not catch up: {behind}")


async def _run(
    settings: Settings, tmp_path: Path, records: list[Any], kills: int, rng: random.Random
) -> tuple[dict[str, tuple[object, ...]], int]:
    await ensure_topics(settings)
    tenants_file = tmp_path / "tenants.json"
    tenants_file.write_bytes(
        dump_tenants([make_tenant(tenant_id="acme"), make_tenant(tenant_id="globex")])
    )
    env = _env(settings, tenants_file, tmp_path / "data")
    # Contiguous slices: the topic ends up in the same order as the uninterrupted run's.
    size = -(-len(records) // (kills + 1))
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    with components({}, tmp_path) as started:
        worker = start(started, ["worker"], env, tmp_path)
        for chunk in chunks[:-1]:
            await produce(settings.kafka_bootstrap, settings.topics.stripe_events, chunk)
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            worker.kill()
            worker = start(started, ["worker"], env, tmp_path)
        await produce(settings.kafka_bootstrap, settings.topics.stripe_events, chunks[-1])
        updates = await _settle(settings)
    return _final(updates)


async def test_five_sigkills_end_in_the_uninterrupted_state(
    settings_factory: Callable[..., Settings], tmp_path: Path, unique: Callable[[str], str]
) -> None:
    records = _records()
    rng = random.Random(7)
    calm_dir, crash_dir = tmp_path / "calm", tmp_path / "crash"
    calm_dir.mkdir()
    crash_dir.mkdir()
    calm, calm_count = await _run(settings_factory(), calm_dir, records, 0, rng)
    crashed_settings = settings_factory(topic_prefix=unique("k") + ".", app_id=unique("crash-app"))
    crashed, crashed_count = await _run(crashed_settings, crash_dir, records, 5, rng)
    assert len(calm) == CUSTOMERS
    # The kills did bite: reprocessed events re-emitted quota updates (same versions).
    assert crashed_count > calm_count
    assert crashed == calm
