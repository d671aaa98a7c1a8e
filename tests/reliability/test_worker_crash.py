"""Exactly once in effect: SIGKILL the worker ten times during a mixed stream of billing
events and usage batches (default units and two named metered features' units); the end
state does not change, for the default quota and for each feature.

Faust writes the changelog before it commits offsets (every 5 s here), so each killed
worker leaves processed-but-uncommitted records of both topics behind, which its
successor processes again. The state's own guards must make that harmless: every
customer ends with the quota of an uninterrupted run *and* of the reference model
(`model.py`: the final Stripe object, the catalog and the distinct usage batches).

The test runs with the worker's Stripe fetch on (the stand-in plays Stripe: each chunk's
subscriptions change there before their events are produced, so a restarted worker fetches
states newer than the events it reprocesses) and off (every event carries its snapshot).

Billing and usage arrive on two topics whose relative order no run controls, and usage
publishes only on threshold crossings, so versions and the `used` of the last published
record may differ between runs; the comparison is therefore on the end state: limit,
status and period of the last published quota, and `used` as stored in the `customers`
table (its changelog).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from quotaflow.envelope import SCHEMA, TENANT
from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.testing.stripe_standin import StandinControl
from quotaflow.topics import ensure_topics
from tables.quota import QuotaUpdate
from tables.usage import BATCH_ID_HEADER, USAGE_SCHEMA
from tests.kafkautil import produce, read_all, wait_for_records
from tests.pipeline import Record, StripeFeed, wait_committed, worker_env
from tests.processes import components, start
from tests.reliability.model import Expected, UsageBatch, Workload, add_usage, build

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(420)]

KILLS = 10
Key = tuple[str, str]


@dataclass(frozen=True)
class Item:
    """A billing event for stripe.events (stamped as received when produced, after its
    subscription changed at Stripe) or a usage batch's record for usage.events."""

    tenant: str
    body: dict[str, Any] | None = None
    usage: Record | None = None


def _usage_record(batch: UsageBatch) -> Record:
    headers = [
        (TENANT, batch.tenant_id.encode()),
        (BATCH_ID_HEADER, batch.batch_id.encode()),
        (SCHEMA, USAGE_SCHEMA),
    ]
    return batch.tenant_id.encode(), batch.value(), headers


def _stream(workload: Workload, usage: Sequence[UsageBatch], rng: random.Random) -> list[Item]:
    """Billing events (every 7th redelivered) and usage batches, interleaved at random,
    each kept in its own order."""
    billing: list[Item] = []
    for i, delivery in enumerate(workload.deliveries()):
        item = Item(delivery.tenant_id, body=orjson.loads(delivery.body))
        billing += [item] * (2 if i % 7 == 0 else 1)
    used: list[Item] = [Item(b.tenant_id, usage=_usage_record(b)) for b in usage]
    out: list[Item] = []
    while billing or used:
        source = billing if used == [] or (billing and rng.random() < 0.7) else used
        out.append(source.pop(0))
    return out


async def _produce(settings: Settings, feed: StripeFeed, items: Sequence[Item]) -> None:
    billing = feed.records([(i.tenant, i.body) for i in items if i.body is not None])
    usage = [i.usage for i in items if i.usage is not None]
    for topic, records in (
        (settings.topics.stripe_events, billing),
        (settings.topics.usage_events, usage),
    ):
        if records:
            await produce(settings.kafka_bootstrap, topic, records)


def _final(
    updates: list[Any], states: list[Any]
) -> tuple[dict[Key, Expected], int, dict[Key, dict[str, int]]]:
    """The end state per customer, how many quota updates repeated a version, and each
    customer's units per named metered feature as stored."""
    last: dict[Key, QuotaUpdate] = {}
    seen: Counter[tuple[str, int]] = Counter()
    for record in updates:
        update = QuotaUpdate.from_json(record.value)
        held = last.get((update.tenant_id, update.customer_id))
        assert held is None or update.version >= held.version, "a version went backwards"
        last[(update.tenant_id, update.customer_id)] = update
        seen[(update.key, update.version)] += 1
    used: dict[Key, int] = {}
    feature_used: dict[Key, dict[str, int]] = {}
    for record in states:  # the changelog: the last value per key is the stored state
        tenant, _, customer = record.key.decode().partition("/")
        stored = orjson.loads(record.value)
        used[(tenant, customer)] = int(stored["used"])
        if stored.get("feature_used"):
            feature_used[(tenant, customer)] = dict(stored["feature_used"])
        else:
            feature_used.pop((tenant, customer), None)
    final: dict[Key, Expected] = {}
    for key, u in last.items():
        assert u.limit is not None
        assert u.period_start is not None
        assert u.period_end is not None
        n = used.get(key, 0)
        final[key] = Expected(
            u.limit, n, max(u.limit - n, 0), u.status, u.period_start, u.period_end
        )
    return final, sum(n - 1 for n in seen.values()), feature_used


async def _run(
    settings: Settings,
    tmp_path: Path,
    workload: Workload,
    stream: list[Item],
    kills: int,
    stripe: StandinControl | None,
) -> tuple[dict[Key, Expected], int, dict[Key, dict[str, int]]]:
    rng = random.Random(7)
    if stripe is not None:
        stripe.reset()  # each run plays Stripe from the start
    feed = StripeFeed(stripe, workload.tenants)
    await ensure_topics(settings)
    tenants_file = tmp_path / "tenants.json"
    tenants_file.write_bytes(dump_tenants(workload.tenants))
    env = worker_env(
        settings,
        tenants_file,
        tmp_path / "data",
        stripe=stripe,
        store="rocksdb://",
        # Commit rarely so that every kill leaves processed-but-uncommitted records behind.
        commit_interval="5",
        # Static membership: the restarted worker takes over the killed one's partitions
        # at once instead of waiting a session timeout for it to leave the group.
        worker_id="worker-0",
        meter_enabled="false",
    )
    quota_updates = settings.topics.quota_updates
    # One billing event per customer first: it sets the period, which would reset any
    # usage counted before it (usage ahead of billing is a race between two topics).
    firsts: dict[Key, int] = {}
    for i, item in enumerate(stream):
        if item.body is not None:
            firsts.setdefault((item.tenant, str(item.body["data"]["object"]["customer"])), i)
    rest = [item for i, item in enumerate(stream) if i not in set(firsts.values())]
    # Contiguous slices: each topic ends up in the same order as the uninterrupted run's.
    size = -(-len(rest) // (kills + 1))
    chunks = [rest[i : i + size] for i in range(0, len(rest), size)]
    with components({}, tmp_path) as started:
        worker = start(started, ["worker"], env, tmp_path)
        await _produce(settings, feed, [stream[i] for i in firsts.values()])
        await wait_for_records(settings.kafka_bootstrap, quota_updates, len(firsts), 120)
        for chunk in chunks[:-1]:
            before = len(await read_all(settings.kafka_bootstrap, quota_updates))
            await _produce(settings, feed, chunk)
            # Kill mid-work: once this chunk's first updates are out, at a random moment.
            await wait_for_records(settings.kafka_bootstrap, quota_updates, before + 1, 120)
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            worker.kill()
            worker = start(started, ["worker"], env, tmp_path)
        await _produce(settings, feed, chunks[-1])
        t = settings.topics
        await wait_committed(settings, 180, [t.stripe_events, t.usage_events])
        updates = await read_all(settings.kafka_bootstrap, quota_updates)
        changelog = f"{settings.app_id}-customers-changelog"
        states = await read_all(settings.kafka_bootstrap, changelog)
    for tenant in workload.tenants:
        feed.assert_fetched(tenant.id, 15)
    return _final(updates, states)


async def test_ten_sigkills_in_a_mixed_stream_end_in_the_reference_state(
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    unique: Callable[[str], str],
    figures: dict[str, Any],
    stripe_fetch: StandinControl | None,
) -> None:
    workload = build(["acme", "globex"], 15, seed=11)
    # Usage of the default quota and of two named metered features, in the same batches:
    # each feature's count must be as exact as the default one's.
    usage = add_usage(
        workload,
        random.Random(5),
        batches_per_node=10,
        max_units=3000,
        features=("exports", "seats"),
    )
    stream = _stream(workload, usage, random.Random(3))
    calm_dir, crash_dir = tmp_path / "calm", tmp_path / "crash"
    calm_dir.mkdir()
    crash_dir.mkdir()
    calm, calm_repeats, calm_features = await _run(
        settings_factory(), calm_dir, workload, stream, 0, stripe_fetch
    )
    crashed_settings = settings_factory(topic_prefix=unique("k") + ".", app_id=unique("crash-app"))
    crashed, repeats, crashed_features = await _run(
        crashed_settings, crash_dir, workload, stream, KILLS, stripe_fetch
    )
    figures.update(
        kills=KILLS,
        fetch=stripe_fetch is not None,
        billing_records=sum(1 for i in stream if i.body is not None),
        usage_records=sum(1 for i in stream if i.usage is not None),
        customers=len(workload.expected),
        repeated_versions=repeats,
    )
    assert calm == workload.expected
    # The kills did bite: reprocessed records re-emitted quotas under versions already sent.
    assert calm_repeats == 0
    assert repeats > 0
    assert crashed == workload.expected
    assert calm_features == crashed_features == workload.feature_used
    assert any(e.status == "exhausted" for e in workload.expected.values())
    assert len({b.batch_id for b in usage}) < len(usage), "no batch was re-sent"
