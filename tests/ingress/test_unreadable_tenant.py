"""An ingress started with an incomplete keyring during a rotation: the tenant whose record
it cannot read is held back (503, not ready, counted), never refused, and the edge's
batch arrives once the ingress restarts with the full keyring."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from edge.reporter import UsageReporter
from ingress.app import build_app
from ingress.publisher import Publisher
from quotaflow.commands.localkafka import free_port
from quotaflow.commands.tenants.audit import ensure_audit_topic
from quotaflow.commands.tenants.writer import open_writer
from quotaflow.settings import Settings
from quotaflow.tenants.keyring import LocalKeyring
from quotaflow.tenants.topic_registry import TopicTenantRegistry
from quotaflow.topics import ensure_topics
from tables.usage import UsageRecord
from tests.edge.factories import unlimited_cache
from tests.ingress.conftest import event_body, signed
from tests.kafkautil import read_all
from tests.tenants.conftest import kek, tenant_doc
from wire import generate_keypair

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

EDGE_KEY, EDGE_PUBLIC = generate_keypair()


@asynccontextmanager
async def _ingress(settings: Settings, port: int, ring: LocalKeyring) -> AsyncIterator[str]:
    """A real ingress on `port` whose registry reads the encrypted topic with `ring`."""
    registry = TopicTenantRegistry(settings, ring)
    await registry.start()
    publisher = Publisher(settings.kafka_bootstrap)
    await publisher.start()
    server = TestServer(build_app(settings, registry, publisher), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.close()
        await publisher.stop()
        await registry.stop()


@pytest.fixture
async def settings(settings_factory: Callable[..., Settings]) -> Settings:
    s = settings_factory(edge_verify_keys={"eu": [EDGE_PUBLIC]}, regions=["eu"])
    await ensure_topics(s)
    await ensure_audit_topic(s)
    return s


async def test_usage_of_an_unreadable_tenant_waits_at_the_edge_until_the_keyring_is_complete(
    settings: Settings, tmp_path: Path
) -> None:
    old, new = kek(), kek()
    # Mid-rotation: "beta" is still wrapped under the old key, "acme" already under the new.
    async with open_writer(settings, keyring=LocalKeyring({"k1": old})) as writer:
        await writer.add(tenant_doc("beta"), actor="test")
    acme = tenant_doc("acme")
    async with open_writer(settings, keyring=LocalKeyring({"k2": new, "k1": old})) as writer:
        await writer.add(acme, actor="test")

    port = free_port()
    cache = unlimited_cache(("acme", "cus_1"), ("beta", "cus_2"))
    reporter = UsageReporter(
        cache,
        ingress_url=f"http://127.0.0.1:{port}",
        region="eu",
        node_id="edge-a",
        keys=[EDGE_KEY],
        spool_dir=tmp_path / "spool",
        interval=3600.0,  # sealed and flushed by hand
        registry=CollectorRegistry(),
    )
    await reporter.start()
    try:
        cache.consume("acme", "cus_1", 6)
        cache.consume("beta", "cus_2", 4)
        await reporter.seal()

        # Started with the old key only: it reads beta, not acme.
        async with _ingress(settings, port, LocalKeyring({"k1": old})) as url:
            async with ClientSession() as http:
                async with http.get(f"{url}/readyz") as resp:
                    ready_status, ready = resp.status, await resp.read()
                async with http.get(f"{url}/metrics") as resp:
                    metrics = await resp.text()
                body = event_body("evt_acme_1", "customer.subscription.updated")
                secret = acme["webhook_secrets"][0]["secret"]
                async with http.post(
                    f"{url}/v1/webhooks/stripe/acme", data=body, headers=signed(body, secret)
                ) as resp:
                    webhook = (resp.status, orjson.loads(await resp.read()), resp.headers)
            await reporter.flush()  # 503: kept, nothing published
            kept = (len(reporter.spool), reporter.spool.units)

        assert ready_status == 503
        doc = orjson.loads(ready)
        assert doc["reason"] == "tenant_records_unreadable"
        assert doc["unreadable_records"] == 1
        for secret_text in (acme["stripe_api_key"], secret, old.hex(), new.hex()):
            assert secret_text not in ready.decode()
            assert secret_text not in metrics
        assert "quotaflow_tenant_records_unreadable 1.0" in metrics
        status, error, headers = webhook
        assert (status, error["error"]["reason"]) == (503, "tenant_unreadable")
        assert int(headers["Retry-After"]) >= 1
        assert kept == (1, 10)  # the whole batch waits at the edge: beta's units too
        assert await read_all(settings.kafka_bootstrap, settings.topics.usage_events) == []
        assert await read_all(settings.kafka_bootstrap, settings.topics.stripe_events) == []

        # Restarted with the full keyring: ready, and the edge's retry of the same batch lands.
        async with _ingress(settings, port, LocalKeyring({"k2": new, "k1": old})) as url:
            async with ClientSession() as http, http.get(f"{url}/readyz") as resp:
                assert resp.status == 200
            await reporter.flush()
            assert len(reporter.spool) == 0
        dropped = reporter.units_dropped._value.get()
    finally:
        await reporter.stop()

    assert dropped == 0
    units: dict[tuple[str, str, str], int] = {}
    for record in await read_all(settings.kafka_bootstrap, settings.topics.usage_events):
        usage = UsageRecord.model_validate_json(record.value)
        for item in usage.items:
            key = (usage.batch_id, usage.tenant_id, item.customer_id)
            assert key not in units, f"{key} published twice"
            units[key] = item.units
    assert {(t, c): u for (_, t, c), u in units.items()} == {
        ("acme", "cus_1"): 6,
        ("beta", "cus_2"): 4,
    }
    assert len({batch_id for batch_id, _, _ in units}) == 1  # the one batch, re-sent as is
