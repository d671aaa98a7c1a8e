"""The edge usage reporter against the real ingress on the real broker: spooled usage survives
restarts and outages, the backlog stays bounded, refused tenants do not wedge the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest

from edge.cache import QuotaCache
from edge.reporter import UsageReporter
from ingress.app import build_app
from ingress.publisher import Publisher
from quotaflow.commands.localkafka import free_port
from quotaflow.registry import StaticTenantRegistry
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from tables.tenant import Tenant, WebhookSecret
from tables.usage import UsageRecord
from tests.edge.factories import unlimited_cache
from tests.kafkautil import read_all
from wire import generate_keypair

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

KEY, PUBLIC = generate_keypair()  # the edge node's credential


def _tenant(tenant_id: str) -> Tenant:
    secret = WebhookSecret(id="s1", secret=f"whsec_{tenant_id}")
    return Tenant(id=tenant_id, webhook_secrets=(secret,), regions=("eu",))


def _reporter(cache: QuotaCache, spool: Path, port: int, **kw: object) -> UsageReporter:
    return UsageReporter(
        cache,
        ingress_url=f"http://127.0.0.1:{port}",
        region="eu",
        node_id="edge-a",
        keys=[KEY],
        spool_dir=spool,
        interval=3600.0,  # the tests seal and flush by hand
        registry=CollectorRegistry(),
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def _ingress(settings: Settings, port: int, tenants: list[Tenant]) -> AsyncIterator[None]:
    publisher = Publisher(settings.kafka_bootstrap)
    await publisher.start()
    server = TestServer(
        build_app(settings, StaticTenantRegistry(tenants), publisher), host="127.0.0.1", port=port
    )
    await server.start_server()
    try:
        yield
    finally:
        await server.close()
        await publisher.stop()


async def _units(settings: Settings) -> dict[tuple[str, str, str], int]:
    """(batch id, tenant, customer) -> units, over every usage.events record."""
    out: dict[tuple[str, str, str], int] = {}
    for r in await read_all(settings.kafka_bootstrap, settings.topics.usage_events):
        rec = UsageRecord.model_validate_json(r.value)
        for item in rec.items:
            key = (rec.batch_id, rec.tenant_id, item.customer_id)
            assert key not in out, f"{key} published twice"
            out[key] = item.units
    return out


@pytest.fixture
def usage_settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(edge_verify_keys={"eu": [PUBLIC]})


async def test_usage_counted_while_the_ingress_is_down_survives_a_sidecar_restart(
    usage_settings: Settings, tmp_path: Path
) -> None:
    await ensure_topics(usage_settings)
    port = free_port()
    cache = unlimited_cache(("acme", "cus_1"), ("acme", "cus_2"))
    first = _reporter(cache, tmp_path / "spool", port)
    await first.start()
    for _ in range(3):
        cache.consume("acme", "cus_1", 5)
        cache.consume("acme", "cus_2", 1)
        await first.seal()
        await first.flush()  # refused: nobody listens
    cache.consume("acme", "cus_1", 7)  # counted, not yet sealed
    await first.stop()  # seals it to disk
    assert len(first.spool) == 4
    assert b"edge_usage_backlog_batches 4.0" in generate_latest(first.registry)

    second = _reporter(unlimited_cache(("acme", "cus_1")), tmp_path / "spool", port)
    await second.start()
    try:
        assert (len(second.spool), second.spool.units) == (4, 25)
        async with _ingress(usage_settings, port, [_tenant("acme")]):
            await second.flush()
            assert len(second.spool) == 0
            second_cache_seq = second.spool.next_seq
    finally:
        await second.stop()
    assert second_cache_seq == 5  # numbering continues across the restart
    units = await _units(usage_settings)
    assert sum(u for (_, _, c), u in units.items() if c == "cus_1") == 22
    assert sum(u for (_, _, c), u in units.items() if c == "cus_2") == 3
    # One incarnation across the restart: the spool survived, so its ids continue.
    assert second.spool.incarnation == first.spool.incarnation
    assert {b for b, _, _ in units} == {
        f"edge-a:{first.spool.incarnation}:{n}" for n in range(1, 5)
    }


async def test_backlog_is_bounded_and_merges_only_unsent_batches(
    usage_settings: Settings, tmp_path: Path
) -> None:
    await ensure_topics(usage_settings)
    port = free_port()
    cache = unlimited_cache(("acme", "cus_1"))
    reporter = _reporter(cache, tmp_path / "spool", port, max_batches=2)
    await reporter.start()
    try:
        for _ in range(10):
            cache.consume("acme", "cus_1", 1)
            await reporter.seal()
        assert (len(reporter.spool), reporter.spool.units) == (2, 10)
        head = reporter.spool.head()
        assert head is not None
        assert head.units == 1  # only never-sent batches absorb usage
        assert b"edge_usage_backlog_units 10.0" in generate_latest(reporter.registry)
        async with _ingress(usage_settings, port, [_tenant("acme")]):
            await reporter.flush()
    finally:
        await reporter.stop()
    units = await _units(usage_settings)
    assert sum(units.values()) == 10


async def test_a_refused_tenant_is_dropped_and_the_others_still_arrive(
    usage_settings: Settings, tmp_path: Path
) -> None:
    await ensure_topics(usage_settings)
    port = free_port()
    cache = unlimited_cache(("acme", "cus_1"), ("gone", "cus_x"))
    reporter = _reporter(cache, tmp_path / "spool", port)
    await reporter.start()
    try:
        cache.consume("acme", "cus_1", 4)
        cache.consume("gone", "cus_x", 9)
        await reporter.seal()
        async with _ingress(usage_settings, port, [_tenant("acme")]):
            async with asyncio.timeout(30):
                await reporter.flush()
        assert len(reporter.spool) == 0
    finally:
        await reporter.stop()
    batch = f"edge-a:{reporter.spool.incarnation}:1"
    assert await _units(usage_settings) == {(batch, "acme", "cus_1"): 4}


async def test_a_spool_from_before_incarnations_is_drained_across_the_upgrade(
    usage_settings: Settings, tmp_path: Path
) -> None:
    """An edge upgraded with unsent batches in its spool re-sends them under their legacy
    ids (the core may hold them already) and numbers new ones under an incarnation; the
    real ingress accepts both."""
    await ensure_topics(usage_settings)
    port = free_port()
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "next_seq").write_text("8")  # what the previous version left
    old = {"seq": 7, "items": [["acme", "cus_1", 5]]}
    (spool / f"batch-{7:020d}.json").write_bytes(orjson.dumps(old))
    cache = unlimited_cache(("acme", "cus_1"))
    reporter = _reporter(cache, spool, port)
    await reporter.start()
    try:
        cache.consume("acme", "cus_1", 3)
        await reporter.seal()
        async with _ingress(usage_settings, port, [_tenant("acme")]):
            async with asyncio.timeout(30):
                await reporter.flush()
        assert len(reporter.spool) == 0
    finally:
        await reporter.stop()
    incarnation = reporter.spool.incarnation
    assert await _units(usage_settings) == {
        ("edge-a:7", "acme", "cus_1"): 5,
        (f"edge-a:{incarnation}:8", "acme", "cus_1"): 3,
    }
