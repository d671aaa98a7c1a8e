"""`quotaflow notifications …`: a tenant's notification endpoints and what was sent to them.

Endpoint changes (`add`, `remove`, `enable`, `disable`) go through the tenant writer
(sealed, signed, audited). `add` prints the endpoint's signing secret once. `enable` also
clears a disable the notifier made (on `notifications.endpoints`, audited).
`list` and `show` read the tenant's partition of `notifications` (no consumer group);
`resend` and `test` produce to `notifications` with `qf-resend` / `qf-endpoint` headers, and
the running notifier delivers them like any other.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from quotaflow.commands.tenants.audit import cli_actor
from quotaflow.commands.tenants.documents import masked
from quotaflow.commands.tenants.endpoints import EndpointAdmin
from quotaflow.commands.tenants.writer import TenantWriter, open_writer
from quotaflow.exceptions import ConfigurationError
from quotaflow.registry import TenantRegistry
from quotaflow.settings import Settings
from quotaflow.tenants.exceptions import TenantNotFound, TenantsError
from quotaflow.tenants.running import open_registry
from quotaflow.topicread import tenant_partition
from quotaflow.topics import ensure_topics
from tables.notification import (
    NOTIFICATION_SCHEMA,
    TEST_TYPE,
    Notification,
    NotificationData,
    iso_timestamp,
)
from tables.tenant import NOTIFICATION_TYPES, NotificationEndpoint, Tenant
from wire import SCHEMA_HEADER

__all__ = ["notifications"]

T = TypeVar("T")
READ_TIMEOUT = 30.0
ENDPOINT_HEADER = "qf-endpoint"
RESEND_HEADER = "qf-resend"


def _echo_json(doc: Any) -> None:
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


def _with_registry(work: Callable[[TenantRegistry, Settings], Awaitable[T]]) -> T:
    """Runs `work` with the tenant registry (file or topic): reading needs no signing key."""

    async def main() -> T:
        settings = Settings()
        await ensure_topics(settings)
        registry = await open_registry(settings)
        try:
            return await work(registry, settings)
        finally:
            await registry.stop()

    try:
        return asyncio.run(main())
    except (TenantsError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None


def _with_writer(work: Callable[[TenantWriter, Settings], Awaitable[T]]) -> T:
    async def main() -> T:
        settings = Settings()
        async with open_writer(settings) as writer:
            return await work(writer, settings)

    try:
        return asyncio.run(main())
    except (TenantsError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def notifications() -> None:
    """Tenant notification endpoints (Standard Webhooks) and their deliveries."""


@notifications.command("add")
@click.argument("tenant_id")
@click.argument("url")
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice(NOTIFICATION_TYPES),
    help="An event type to send (repeat); default all.",
)
@click.option(
    "--threshold", "thresholds", multiple=True, type=float, help="A fraction (repeat); 0.8."
)
@click.option("--feature", help="Only notifications about this feature.")
def add_endpoint(
    tenant_id: str,
    url: str,
    types: tuple[str, ...],
    thresholds: tuple[float, ...],
    feature: str | None,
) -> None:
    """Add an endpoint; prints its id and signing secret (shown this once)."""

    async def work(writer: TenantWriter, settings: Settings) -> dict[str, Any]:
        admin = EndpointAdmin(writer, allow_private=settings.notify_allow_private)
        endpoint, secret = await admin.add(
            tenant_id,
            url,
            cli_actor(),
            event_types=types or None,
            thresholds=thresholds or None,
            feature=feature,
        )
        return {**endpoint.model_dump(mode="json"), "secret": secret}

    _echo_json(_with_writer(work))


@notifications.command("remove")
@click.argument("tenant_id")
@click.argument("endpoint_id")
def remove_endpoint(tenant_id: str, endpoint_id: str) -> None:
    """Remove an endpoint (what is queued for it goes to the dead letters)."""

    async def work(writer: TenantWriter, settings: Settings) -> None:
        admin = EndpointAdmin(writer, allow_private=settings.notify_allow_private)
        await admin.remove(tenant_id, endpoint_id, cli_actor())

    _with_writer(work)
    click.echo(f"removed {endpoint_id}")


@notifications.command("disable")
@click.argument("tenant_id")
@click.argument("endpoint_id")
@click.option("--reason", default="", help="Recorded in the document and the audit.")
def disable_endpoint(tenant_id: str, endpoint_id: str, reason: str) -> None:
    """Stop delivering to an endpoint (its notifications go to the dead letters)."""

    async def work(writer: TenantWriter, settings: Settings) -> None:
        admin = EndpointAdmin(writer, allow_private=settings.notify_allow_private)
        await admin.set_enabled(tenant_id, endpoint_id, False, cli_actor(), reason)

    _with_writer(work)
    click.echo(f"disabled {endpoint_id}")


@notifications.command("enable")
@click.argument("tenant_id")
@click.argument("endpoint_id")
def enable_endpoint(tenant_id: str, endpoint_id: str) -> None:
    """Deliver to an endpoint again, also after the notifier disabled it."""
    from streams.notifier.state import write_state

    async def clear(registry: TenantRegistry, settings: Settings) -> bool:
        endpoint = _endpoint(_tenant(registry, tenant_id), endpoint_id)
        async with _producer(settings) as producer:
            await write_state(
                producer,
                settings,
                tenant_id,
                endpoint_id,
                disabled=False,
                reason="enabled by an operator",
                actor=cli_actor(),
            )
        return not endpoint.enabled

    async def work(writer: TenantWriter, settings: Settings) -> None:
        admin = EndpointAdmin(writer, allow_private=settings.notify_allow_private)
        await admin.set_enabled(tenant_id, endpoint_id, True, cli_actor())

    # The notifier's disable is cleared first; the document is changed (which needs the
    # tenants signing key) only if an operator had disabled the endpoint there.
    if _with_registry(clear):
        _with_writer(work)
    click.echo(f"enabled {endpoint_id}")


@notifications.command("list")
@click.argument("tenant_id")
@click.option("--last", default=20, show_default=True, help="How many recent notifications.")
def list_cmd(tenant_id: str, last: int) -> None:
    """The tenant's endpoints (secrets masked, with the notifier's disables) and its most
    recent notifications."""

    async def work(registry: TenantRegistry, settings: Settings) -> dict[str, Any]:
        tenant = _tenant(registry, tenant_id)
        disabled = await _notifier_disables(settings)
        endpoints = [
            {**doc, "notifier_disabled": disabled.get((tenant_id, doc["id"]))}
            for doc in masked(tenant)["notification_endpoints"]
        ]
        records = await _tenant_notifications(settings, tenant_id)
        recent = [
            {
                "id": n.id,
                "type": n.type,
                "timestamp": n.timestamp,
                "customer_id": n.data.customer_id,
                "threshold": n.data.threshold,
            }
            for n, _ in records[-last:]
        ]
        return {"endpoints": endpoints, "recent": recent}

    _echo_json(_with_registry(work))


@notifications.command("show")
@click.argument("tenant_id")
@click.argument("notification_id")
def show_cmd(tenant_id: str, notification_id: str) -> None:
    """One notification as delivered, and every dead letter it became."""

    async def work(registry: TenantRegistry, settings: Settings) -> dict[str, Any]:
        _tenant(registry, tenant_id)
        found = [
            n
            for n, _ in await _tenant_notifications(settings, tenant_id)
            if n.id == notification_id
        ]
        if not found:
            raise click.ClickException(f"no notification {notification_id} for {tenant_id}")
        letters = await _dead_letters(settings, tenant_id, notification_id)
        return {
            "notification": found[0].model_dump(mode="json"),
            "records": len(found),
            "dead_letters": letters,
        }

    _echo_json(_with_registry(work))


@notifications.command("resend")
@click.argument("tenant_id")
@click.argument("notification_id")
@click.option("--endpoint", "endpoint_id", help="Only to this endpoint.")
def resend_cmd(tenant_id: str, notification_id: str, endpoint_id: str | None) -> None:
    """Deliver a notification again (same id, so receivers can tell), even if delivered."""

    async def work(registry: TenantRegistry, settings: Settings) -> str:
        _tenant(registry, tenant_id)
        found = [
            raw
            for n, raw in await _tenant_notifications(settings, tenant_id)
            if n.id == notification_id
        ]
        if not found:
            raise click.ClickException(f"no notification {notification_id} for {tenant_id}")
        headers = [(SCHEMA_HEADER, NOTIFICATION_SCHEMA), (RESEND_HEADER, b"1")]
        if endpoint_id is not None:
            headers.append((ENDPOINT_HEADER, endpoint_id.encode()))
        await _produce(settings, tenant_id, found[0], headers)
        return notification_id

    click.echo(f"resent {_with_registry(work)}")


@notifications.command("test")
@click.argument("tenant_id")
@click.option("--endpoint", "endpoint_id", help="Only to this endpoint (default: all).")
def test_cmd(tenant_id: str, endpoint_id: str | None) -> None:
    """Send a `notification.test` event through the notifier; prints its id."""

    async def work(registry: TenantRegistry, settings: Settings) -> str:
        tenant = _tenant(registry, tenant_id)
        if not tenant.notification_endpoints:
            raise click.ClickException(f"{tenant_id} has no notification endpoints")
        notification = Notification(
            id=f"msg_test_{uuid.uuid4().hex}",
            type=TEST_TYPE,
            timestamp=iso_timestamp(time.time()),
            data=NotificationData(
                tenant_id=tenant_id, customer_id="test", stripe_customer_id="test"
            ),
        )
        headers = [(SCHEMA_HEADER, NOTIFICATION_SCHEMA), (RESEND_HEADER, b"1")]
        if endpoint_id is not None:
            headers.append((ENDPOINT_HEADER, endpoint_id.encode()))
        await _produce(settings, tenant_id, notification.to_json(), headers)
        return notification.id

    click.echo(_with_registry(work))


# -- helpers ---------------------------------------------------------------------------------


def _tenant(registry: TenantRegistry, tenant_id: str) -> Tenant:
    tenant = registry.get(tenant_id)
    if tenant is None:
        raise TenantNotFound(tenant_id)
    return tenant


def _endpoint(tenant: Tenant, endpoint_id: str) -> NotificationEndpoint:
    for endpoint in tenant.notification_endpoints:
        if endpoint.id == endpoint_id:
            return endpoint
    raise click.ClickException(f"{tenant.id} has no notification endpoint {endpoint_id}")


class _producer:
    def __init__(self, settings: Settings) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
        )

    async def __aenter__(self) -> AIOKafkaProducer:
        async with asyncio.timeout(READ_TIMEOUT):
            await self._producer.start()
        return self._producer

    async def __aexit__(self, *_: object) -> None:
        await self._producer.stop()


async def _produce(
    settings: Settings, tenant_id: str, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    async with _producer(settings) as producer, asyncio.timeout(READ_TIMEOUT):
        await producer.send_and_wait(
            settings.topics.notifications,
            key=tenant_id.encode(),
            value=value,
            headers=headers,
            partition=tenant_partition(tenant_id, settings.partitions),
        )


async def _read_partition(settings: Settings, topic: str, partition: int) -> list[Any]:
    """Every record of one partition up to its end now."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    out: list[Any] = []
    async with asyncio.timeout(READ_TIMEOUT):
        await consumer.start()
    try:
        consumer.assign([tp])
        async with asyncio.timeout(READ_TIMEOUT):
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=200)
                out.extend(r for r in batch.get(tp, []) if r.offset < end)
    finally:
        await consumer.stop()
    return out


async def _tenant_notifications(
    settings: Settings, tenant_id: str
) -> list[tuple[Notification, bytes]]:
    partition = tenant_partition(tenant_id, settings.partitions)
    found: list[tuple[Notification, bytes]] = []
    for record in await _read_partition(settings, settings.topics.notifications, partition):
        if record.key != tenant_id.encode():
            continue
        try:
            found.append((Notification.from_json(record.value), record.value))
        except ValueError:
            continue
    return found


async def _dead_letters(
    settings: Settings, tenant_id: str, notification_id: str
) -> list[dict[str, Any]]:
    partition = tenant_partition(tenant_id, settings.partitions)
    out = []
    for record in await _read_partition(settings, settings.topics.deadletter, partition):
        headers = dict(record.headers or ())
        if headers.get("qf-dl-topic") != settings.topics.notifications.encode():
            continue
        try:
            if Notification.from_json(record.value).id != notification_id:
                continue
        except ValueError:
            continue
        out.append(
            {
                "endpoint": (headers.get(ENDPOINT_HEADER) or b"").decode(),
                "reason": (headers.get("qf-dl-reason") or b"").decode(),
                "at": float(headers.get("qf-dl-at") or 0),
            }
        )
    return out


async def _notifier_disables(settings: Settings) -> dict[tuple[str, str], str | None]:
    latest: dict[tuple[str, str], str | None] = {}
    for record in await _read_partition(settings, settings.topics.notification_endpoints, 0):
        try:
            tenant_id, endpoint_id = record.key.decode().split("/", 1)
            doc = orjson.loads(record.value)
        except (AttributeError, ValueError):
            continue
        latest[(tenant_id, endpoint_id)] = str(doc.get("reason")) if doc.get("disabled") else None
    return latest
