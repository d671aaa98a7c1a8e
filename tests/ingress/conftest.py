"""Factories for ingress tests: tenants, a topic on the session broker, a running app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ingress.admission import AdmissionLimits
from ingress.app import build_app
from ingress.limits import IngressLimits
from ingress.publisher import Publisher
from ingress.signature import sign_header
from quotaflow.registry import StaticTenantRegistry
from quotaflow.settings import Settings
from tables.tenant import Tenant, WebhookSecret

Client = TestClient[web.Request, web.Application]


def make_tenant(tenant_id: str, secret: str | None = None, **fields: Any) -> Tenant:
    secret = secret or f"whsec_{tenant_id}_secret"
    return Tenant(
        id=tenant_id,
        webhook_secrets=(WebhookSecret(id=f"{tenant_id}-1", secret=secret),),
        regions=("eu",),
        **fields,
    )


def event_body(event_id: str = "evt_1", event_type: str = "invoice.paid", **fields: Any) -> bytes:
    doc: dict[str, Any] = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "livemode": False,
        "data": {"object": {"id": "in_1", "object": "invoice", "note": "caf\u00e9 \u2603"}},
    }
    doc.update(fields)
    return orjson.dumps(doc)


def signed(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    return {
        "Stripe-Signature": sign_header(body, secret.encode(), timestamp),
        "Content-Type": "application/json; charset=utf-8",
    }


@dataclass
class Ingress:
    client: Client
    settings: Settings
    publisher: Publisher
    app: web.Application

    async def post(
        self,
        path: str,
        body: bytes,
        secret: str | None,
        *,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        sent = signed(body, secret) if secret is not None else {"Content-Type": "application/json"}
        sent.update(headers or {})
        async with self.client.post(path, data=body, headers=sent) as resp:
            return resp.status, orjson.loads(await resp.read()), dict(resp.headers)


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    async with asyncio.timeout(15):
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            await admin.close()


async def read_topic(
    bootstrap: str, topic: str, partitions_count: int = 2
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record acknowledged so far: reads each partition up to its end offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    records: list[ConsumerRecord[bytes, bytes]] = []
    async with asyncio.timeout(20):
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(partitions_count)]
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            pending = {tp for tp in partitions if ends[tp] > 0}
            while pending:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, recs in batch.items():
                    records.extend(r for r in recs if r.offset < ends[tp])
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()
    return records


IngressFactory = Callable[..., Awaitable[Ingress]]


@pytest.fixture
async def ingress_factory(
    settings_factory: Callable[..., Settings],
) -> AsyncIterator[IngressFactory]:
    """Builds a running ingress app (real publisher, real topic) around the given tenants."""
    started: list[Ingress] = []

    async def make(
        tenants: Iterable[Tenant],
        *,
        bootstrap: str | None = None,
        limits: IngressLimits | None = None,
        admission_limits: AdmissionLimits | None = None,
        platform_secrets: Iterable[WebhookSecret] = (),
        **overrides: Any,
    ) -> Ingress:
        settings = settings_factory(**overrides)
        await create_topic(settings.kafka_bootstrap, settings.topics.stripe_events, 2)
        publisher = Publisher(bootstrap or settings.kafka_bootstrap)
        await publisher.start()
        app = build_app(
            settings,
            StaticTenantRegistry(tenants),
            publisher,
            limits=limits,
            admission_limits=admission_limits,
            platform_secrets=tuple(platform_secrets),
        )
        client: Client = TestClient(TestServer(app))
        await client.start_server()
        ingress = Ingress(client, settings, publisher, app)
        started.append(ingress)
        return ingress

    yield make
    for ingress in started:
        await ingress.client.close()
        await ingress.publisher.stop()
