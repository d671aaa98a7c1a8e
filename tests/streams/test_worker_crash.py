"""Exactly once in effect: SIGKILL the worker again and again, the result does not change.

Faust commits offsets every half second and writes the changelog before that, so a
killed worker reprocesses events whose effects are already stored. The state's own
guards must make that harmless: the last quota per customer after five kills equals an
uninterrupted run's, version for version.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from tables.quota import QuotaUpdate
from tests.kafkautil import produce, read_all, wait_for_records
from tests.pipeline import PERIOD, stripe_record, wait_committed, worker_env
from tests.processes import components, start
from tests.tables.factories import BASIC, PRO, TOPUP, event, invoice, make_tenant, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

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
        record = stripe_record(tenant, body)
        out.append(record)
        if i % 7 == 0:  # Stripe redelivers some events
            out.append(record)
    return out


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


async def _run(
    settings: Settings, tmp_path: Path, records: list[Any], kills: int, rng: random.Random
) -> tuple[dict[str, tuple[object, ...]], int]:
    await ensure_topics(settings)
    tenants_file = tmp_path / "tenants.json"
    tenants_file.write_bytes(
        dump_tenants([make_tenant(tenant_id="acme"), make_tenant(tenant_id="globex")])
    )
    env = worker_env(
        settings,
        tenants_file,
        tmp_path / "data",
        store="rocksdb://",
        # Commit rarely so that every kill leaves processed-but-uncommitted events behind.
        commit_interval="5",
        # Static membership: the restarted worker takes over the killed one's partitions
        # at once instead of waiting a session timeout for it to leave the group.
        worker_id="worker-0",
    )
    # Contiguous slices: the topic ends up in the same order as the uninterrupted run's.
    size = -(-len(records) // (kills + 1))
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    with components({}, tmp_path) as started:
        worker = start(started, ["worker"], env, tmp_path)
        for chunk in chunks[:-1]:
            before = len(await read_all(settings.kafka_bootstrap, settings.topics.quota_updates))
            await produce(settings.kafka_bootstrap, settings.topics.stripe_events, chunk)
            # Kill mid-work: once this chunk's first updates are out, at a random moment.
            await wait_for_records(
                settings.kafka_bootstrap, settings.topics.quota_updates, before + 1
            )
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            worker.kill()
            worker = start(started, ["worker"], env, tmp_path)
        await produce(settings.kafka_bootstrap, settings.topics.stripe_events, chunks[-1])
        await wait_committed(settings)
        updates = await read_all(settings.kafka_bootstrap, settings.topics.quota_updates)
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
