"""Reconcile against Stripe peers: stripe-mock (shapes; fixture events) and localstripe
(stateful: the events of objects the test creates)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import stripe
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from quotaflow.envelope import Envelope
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from streams.reconcile import BACKFILL, RECONCILE_SECRET_ID, held_event_ids, reconcile
from tests.kafkautil import read_all
from tests.tables.factories import make_tenant

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

# stripe-mock's fixture events are dated years back: a window that reaches them.
ALL_OF_IT = 0.0


async def test_missing_events_are_injected_once_with_a_reconcile_envelope(
    settings_factory: Callable[..., Settings], stripe_mock: str
) -> None:
    settings = settings_factory(stripe_api_base=stripe_mock)
    await ensure_topics(settings)
    tenant = make_tenant().model_copy(update={"stripe_api_key": SecretStr("sk_test_123")})

    dry = await reconcile(settings, tenant, ALL_OF_IT, dry_run=True)
    assert dry.listed >= 1
    assert dry.missing
    assert dry.injected == 0
    first = await reconcile(settings, tenant, ALL_OF_IT)
    assert first.injected == len(dry.missing)
    assert first.disabled_endpoints == []  # stripe-mock's fixture endpoint is enabled
    second = await reconcile(settings, tenant, ALL_OF_IT)
    assert (second.injected, second.present) == (0, second.listed)

    records = await read_all(settings.kafka_bootstrap, settings.topics.stripe_events)
    assert len(records) == first.injected
    envelope = Envelope.from_headers(records[0].headers)
    assert (envelope.tenant_id, envelope.secret_id) == ("acme", RECONCILE_SECRET_ID)
    assert envelope.event_id in first.missing
    assert dict(records[0].headers)[BACKFILL] == b"reconcile"
    assert records[0].key == b"acme"


async def test_a_window_excludes_older_events(
    settings_factory: Callable[..., Settings], stripe_mock: str
) -> None:
    settings = settings_factory(stripe_api_base=stripe_mock)
    await ensure_topics(settings)
    tenant = make_tenant().model_copy(update={"stripe_api_key": SecretStr("sk_test_123")})
    report = await reconcile(settings, tenant, time.time() - 3 * 86400, dry_run=True)
    assert report.listed == 0


async def test_events_of_new_objects_on_localstripe_are_backfilled(
    settings_factory: Callable[..., Settings], localstripe: str, tmp_path: Path
) -> None:
    settings = settings_factory(stripe_api_base=localstripe)
    await ensure_topics(settings)
    key = "sk_test_reconcile"
    tenant = make_tenant().model_copy(update={"stripe_api_key": SecretStr(key)})
    client = stripe.StripeClient(key, base_addresses={"api": localstripe}, max_network_retries=0)
    since = time.time() - 5
    customer = client.v1.customers.create(params={"email": "r@example.com"})

    report = await reconcile(settings, tenant, since)
    assert report.disabled_endpoints is None  # localstripe has no endpoint listing
    records = await read_all(settings.kafka_bootstrap, settings.topics.stripe_events)
    types = {Envelope.from_headers(r.headers).event_type for r in records}
    assert "customer.created" in types
    assert any(customer.id.encode() in r.value for r in records)
    again = await reconcile(settings, tenant, since)
    assert again.injected == 0


async def test_held_ids_are_read_from_when_the_window_could_have_been_received(
    settings_factory: Callable[..., Settings],
) -> None:
    """The resume reconcile runs on every resume: it reads the tenant's partition from the
    window's start (less a margin), not 14 days of it."""
    settings = settings_factory()
    await ensure_topics(settings)
    now = time.time()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for event_id, at in (("evt_old", now - 7200), ("evt_new", now - 60)):
            envelope = Envelope("acme", event_id, "invoice.paid", False, at, "s1")
            await producer.send_and_wait(
                settings.topics.stripe_events,
                b"{}",
                key=b"acme",
                headers=envelope.headers(),
                timestamp_ms=int(at * 1000),
            )
    finally:
        await producer.stop()
    assert await held_event_ids(settings, "acme") == {"evt_old", "evt_new"}
    assert await held_event_ids(settings, "acme", received_since=now - 3600) == {"evt_new"}
