"""The meter reporter parks a tenant whose Stripe key is revoked, not its partition: the
other tenant's jobs all arrive, the committed offset stays below the parked job across a
restart, and once the key is replaced every parked job arrives exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from quotaflow.commands.tenants.audit import ensure_audit_topic
from quotaflow.commands.tenants.writer import open_writer
from quotaflow.settings import Settings
from quotaflow.tenants.keyring import LocalKeyring
from quotaflow.tenants.topic_registry import TopicTenantRegistry
from quotaflow.testing.stripe_standin import StandinControl
from quotaflow.topics import ensure_topics
from streams.meter_client import MeterClient, MeterJob
from streams.meter_parking import Parking
from streams.meter_reporter import MeterReporter
from streams.usage_agent import meter_identifier, meter_topic
from streams.worker_tenants import TenantsCollector, held_back
from tests.tenants.conftest import kek, tenant_doc

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

JOBS_PER_TENANT = 24
PARK_LIMIT = 5  # fewer than the parked tenant's jobs: the rest are re-read by seeking


def _job(tenant_id: str, n: int) -> MeterJob:
    batch_id = f"node-1:{n}"
    customer = f"cus_{n % 3}"
    return MeterJob(
        tenant_id=tenant_id,
        stripe_customer_id=customer,
        event_name="api_calls",
        value=n,
        identifier=meter_identifier(tenant_id, customer, "api_calls", batch_id),
        timestamp=int(time.time()),
        batch_id=batch_id,
    )


async def _produce(settings: Settings, jobs: list[MeterJob]) -> dict[str, int]:
    """All on partition 0, in order; returns each job's offset by identifier."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    offsets: dict[str, int] = {}
    try:
        for job in jobs:
            value = orjson.dumps({f: getattr(job, f) for f in job.__dataclass_fields__})
            key = "/".join(job.key).encode()
            meta = await asyncio.wait_for(
                producer.send_and_wait(meter_topic(settings), value, key=key, partition=0), 10
            )
            offsets[job.identifier] = meta.offset
    finally:
        await producer.stop()
    return offsets


async def _committed(settings: Settings, group: str) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group)
    await consumer.start()
    try:
        async with asyncio.timeout(10):
            committed: int | None = await consumer.committed(
                TopicPartition(meter_topic(settings), 0)
            )
        return committed
    finally:
        await consumer.stop()


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - polling other processes (broker, stand-in)
            await asyncio.sleep(0.1)


async def test_a_revoked_key_parks_its_tenant_until_replaced_and_nothing_is_lost_or_doubled(
    settings_factory: Callable[..., Settings], stripe_standin: StandinControl
) -> None:
    settings = settings_factory(regions=["eu"])
    await ensure_topics(settings)
    await ensure_audit_topic(settings)
    ring = LocalKeyring({"k1": kek()})
    good_doc, bad_doc = tenant_doc("good"), tenant_doc("bad")
    async with open_writer(settings, keyring=ring) as writer:
        await writer.add(good_doc, actor="test")
        await writer.add(bad_doc, actor="test")
    await asyncio.to_thread(stripe_standin.revoke, bad_doc["stripe_api_key"])

    # Interleaved on one partition, the parked tenant's first job before any of the other's.
    jobs = [_job(t, n) for n in range(1, JOBS_PER_TENANT + 1) for t in ("bad", "good")]
    offsets = await _produce(settings, jobs)
    first_bad = min(offsets[j.identifier] for j in jobs if j.tenant_id == "bad")
    group = f"{settings.app_id}-meter"

    registry = TopicTenantRegistry(settings, ring)
    await registry.start()

    def reporter() -> MeterReporter:
        return MeterReporter(
            bootstrap=settings.kafka_bootstrap,
            topic=meter_topic(settings),
            group_id=group,
            registry=lambda: registry,
            client=MeterClient(api_base=stripe_standin.url, base_backoff=0.05, max_backoff=0.5),
            max_in_flight=4,
            max_queued=8,  # a parked tenant must not take these slots from the other
            # Backoff far longer than the test: only the registry's change can release it.
            parking=Parking(limit=PARK_LIMIT, base_backoff=60.0, max_backoff=120.0),
        )

    async def delivered(account: str) -> dict[str, Any]:
        events = await asyncio.to_thread(stripe_standin.meter_events, account)
        return {e["identifier"]: e["payload"]["value"] for e in events}

    good_jobs = {j.identifier: str(j.value) for j in jobs if j.tenant_id == "good"}
    bad_jobs = {j.identifier: str(j.value) for j in jobs if j.tenant_id == "bad"}
    good_account, bad_account = good_doc["stripe_account"], bad_doc["stripe_account"]

    try:
        first = reporter()
        await first.start()
        try:
            await _until(lambda: _has(delivered(good_account), len(good_jobs)))
            await _until(lambda: _equals(_committed(settings, group), first_bad))
            status = first.status()
        finally:
            await first.stop()
        assert await delivered(good_account) == good_jobs
        assert await delivered(bad_account) == {}
        assert (status["parked_tenants"], status["parked"][0]["reason"]) == (1, "unauthorized")
        assert status["parked"][0]["tenant_id"] == "bad"
        assert status["parked_jobs_held"] <= PARK_LIMIT
        assert status["parked"][0]["rereads"] == 1  # the rest of its jobs were let go
        assert bad_doc["stripe_api_key"] not in orjson.dumps(status).decode()
        assert await _committed(settings, group) == first_bad  # stopped: still below it

        # A restart re-reads from the parked job; the key is then replaced.
        second = reporter()
        await second.start()
        try:
            await asyncio.sleep(1.0)
            assert await delivered(bad_account) == {}
            assert second.status()["parked_tenants"] == 1
            new_key = "rk_test_bad_replaced_" + kek().hex()[:16]
            async with open_writer(settings, keyring=ring) as writer:
                await writer.update("bad", {"stripe_api_key": new_key}, "test")
            await _until(lambda: _has(delivered(bad_account), len(bad_jobs)), timeout=10)
            await _until(lambda: _equals(_committed(settings, group), len(jobs)))
            assert second.status()["parked_tenants"] == 0
        finally:
            await second.stop()
    finally:
        await registry.stop()

    assert await delivered(bad_account) == bad_jobs
    assert await delivered(good_account) == good_jobs
    stats = await asyncio.to_thread(stripe_standin.stats)
    recorded = {label: counts["meter_events"] for label, counts in stats["accounts"].items()}
    duplicates = sum(c["meter_events_duplicate"] for c in stats["accounts"].values())
    assert recorded == {good_account: len(good_jobs), bad_account: len(bad_jobs)}
    assert duplicates == 0


async def _has(events: Awaitable[dict[str, Any]], count: int) -> bool:
    return len(await events) >= count


async def _equals(value: Awaitable[int | None], expected: int) -> bool:
    return await value == expected


async def test_unreadable_and_keyless_tenants_wait_for_their_fix_and_the_others_flow(
    settings_factory: Callable[..., Settings], stripe_standin: StandinControl
) -> None:
    settings = settings_factory(regions=["eu"])
    await ensure_topics(settings)
    await ensure_audit_topic(settings)
    old, new = kek(), kek()
    docs = {t: tenant_doc(t) for t in ("late", "keyless", "good")}
    del docs["keyless"]["stripe_api_key"]
    async with open_writer(settings, keyring=LocalKeyring({"k1": old})) as writer:
        await writer.add(docs["keyless"], actor="test")
        await writer.add(docs["good"], actor="test")
    async with open_writer(settings, keyring=LocalKeyring({"k2": new, "k1": old})) as writer:
        await writer.add(docs["late"], actor="test")  # wrapped under the new key only
    jobs = [_job(t, n) for n in range(1, 7) for t in ("late", "keyless", "good")]
    offsets = await _produce(settings, jobs)
    group = f"{settings.app_id}-meter"

    async def delivered(tenant_id: str) -> dict[str, Any]:
        account = docs[tenant_id]["stripe_account"]
        events = await asyncio.to_thread(stripe_standin.meter_events, account)
        return {e["identifier"]: e["payload"]["value"] for e in events}

    def expected(tenant_id: str) -> dict[str, str]:
        return {j.identifier: str(j.value) for j in jobs if j.tenant_id == tenant_id}

    async def run(
        ring: LocalKeyring, during: Callable[[MeterReporter, SimpleNamespace], Awaitable[None]]
    ) -> None:
        registry = TopicTenantRegistry(settings, ring)
        await registry.start()
        reporter = MeterReporter(
            bootstrap=settings.kafka_bootstrap,
            topic=meter_topic(settings),
            group_id=group,
            registry=lambda: registry,
            client=MeterClient(api_base=stripe_standin.url, base_backoff=0.05, max_backoff=0.5),
            parking=Parking(limit=2, base_backoff=0.2, max_backoff=1.0),
        )
        await reporter.start()
        # What streams/app.py and usage_agent.py hang on the Faust app for /readyz, /metrics.
        app = SimpleNamespace(tenants_of=lambda: registry, meter_reporter=reporter)
        try:
            await during(reporter, app)
        finally:
            await reporter.stop()
            await registry.stop()

    first_late = min(offsets[i] for i in expected("late"))

    async def incomplete_keyring(reporter: MeterReporter, app: SimpleNamespace) -> None:
        await _until(lambda: _has(delivered("good"), 6))
        await _until(lambda: _equals(_committed(settings, group), first_late))
        reasons = {p["tenant_id"]: p["reason"] for p in reporter.status()["parked"]}
        assert reasons == {"late": "tenant_unreadable", "keyless": "no_api_key"}
        shown = held_back(app)  # type: ignore[arg-type]
        assert shown["unreadable_records"] == {"count": 1, "ids": ["late"]}
        assert shown["meter"]["parked_tenants"] == 2
        samples = {
            (s.name, tuple(s.labels.values())): s.value
            for family in TenantsCollector(app).collect()  # type: ignore[arg-type]
            for s in family.samples
        }
        assert samples[("quotaflow_tenant_records_unreadable", ())] == 1
        assert samples[("quotaflow_meter_parked_tenants", ("unauthorized",))] == 0
        assert samples[("quotaflow_meter_parked_tenants", ("no_api_key",))] == 1
        assert samples[("quotaflow_meter_parked_tenants", ("tenant_unreadable",))] == 1
        assert samples[("quotaflow_meter_parked_jobs", ())] <= 4
        assert samples[("quotaflow_meter_parked_oldest_seconds", ())] > 0
        # A key added to the keyless tenant: its jobs go at once (registry listener).
        async with open_writer(settings, keyring=LocalKeyring({"k1": old})) as writer:
            key = "rk_test_keyless_" + kek().hex()[:16]
            await writer.update("keyless", {"stripe_api_key": key}, "test")
        await _until(lambda: _has(delivered("keyless"), 6), timeout=10)
        assert await delivered("late") == {}
        assert await _committed(settings, group) == first_late

    async def full_keyring(reporter: MeterReporter, app: SimpleNamespace) -> None:
        assert "unreadable_records" not in held_back(app)  # type: ignore[arg-type]
        await _until(lambda: _has(delivered("late"), 6))
        await _until(lambda: _equals(_committed(settings, group), len(jobs)))

    await run(LocalKeyring({"k1": old}), incomplete_keyring)
    await run(LocalKeyring({"k2": new, "k1": old}), full_keyring)
    for tenant_id in docs:
        assert await delivered(tenant_id) == expected(tenant_id)
    stats = await asyncio.to_thread(stripe_standin.stats)
    assert sum(c["meter_events_duplicate"] for c in stats["accounts"].values()) == 0
