"""The billing worker: a Faust app whose agent turns Stripe events into customer quotas.

Per event: read the envelope, fetch the current object from Stripe (the event is a
signal), apply the pure transition from `tables.billing`, store the new customer state
in the `customers` table (changelog topic), and publish the quota update on
`quota.updates` in the event's partition, which is the tenant's partition.

Faust is at-least-once: a crash replays events whose effects may already be in the
changelog. The state records what it applied, so replays change nothing; a replay of
an already-applied offset re-emits the current quota (harmless thanks to `version`),
which covers a crash between the changelog write and the quota-update send.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
import mode
import orjson

from quotaflow.envelope import Envelope
from quotaflow.registry import TenantRegistry
from quotaflow.settings import Settings
from quotaflow.tenants.running import RunningRegistry, open_registry
from streams.deadletter import send_deadletter
from streams.faust_tuning import reseek_after_recovery, set_fetch_max_wait
from streams.grace import add_grace_timer
from streams.records import publish, raw_table, raw_topic
from streams.stripe_client import StripeReader
from streams.usage_agent import add_usage_agent
from tables.billing import (
    CustomerState,
    Outcome,
    QuotaPolicy,
    Source,
    apply_event,
    customer_of,
    fetch_target,
)

log = logging.getLogger("quotaflow.worker")

PRODUCER_BATCH_BYTES = 512 * 1024
PRODUCER_REQUEST_BYTES = 1024 * 1024


class WorkerResources:
    """What the agent needs beyond Faust, opened in the worker's own loop.

    The tenant registry follows a topic with a background consumer, so it must start
    inside the loop Faust runs; the agent waits for `ready` before its first event, so no
    event is ever judged against a half-loaded registry.
    """

    def __init__(self, settings: Settings, registry: TenantRegistry | None) -> None:
        self._settings = settings
        self._given = registry
        self._opened: RunningRegistry | None = None
        self.registry: TenantRegistry | None = registry
        self.ready = asyncio.Event()
        if registry is not None:
            self.ready.set()

    async def open(self) -> None:
        if self.registry is None:
            self._opened = await open_registry(self._settings)
            self.registry = self._opened
        self.ready.set()

    async def close(self) -> None:
        if self._opened is not None:
            await self._opened.stop()
            self._opened = None


def create_app(
    settings: Settings,
    registry: TenantRegistry | None = None,
    *,
    stripe_reader: StripeReader | None = None,
    web_port: int | None = None,
) -> faust.App:
    """Builds the worker app. One app per process (and per test).

    Without `registry`, the app opens the one `open_registry(settings)` gives when it starts.
    """
    topics = settings.topics
    set_fetch_max_wait(settings.worker_fetch_wait_ms)
    reseek_after_recovery()
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store=settings.store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_allow_declare=True,
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_bind=settings.worker_web_host,
        web_in_thread=False,
        broker_commit_interval=settings.commit_interval,
        consumer_group_instance_id=settings.worker_id,
        producer_linger=0.001,
        # aiokafka makes a send wait while its partition's batch is full until that batch
        # is sent, and sends one request per broker at a time: with the 16 KiB default a
        # partition moved ~10 customer states per round trip. 512 KiB stays under the
        # broker's 1 MiB message limit (BENCHMARKS.md, usage and worker).
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        producer_max_request_size=PRODUCER_REQUEST_BYTES,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        autodiscover=False,
    )
    policy = QuotaPolicy(grace_seconds=settings.grace_seconds)
    reader = (
        stripe_reader
        if stripe_reader is not None
        else (StripeReader(api_base=settings.stripe_api_base) if settings.stripe_fetch else None)
    )

    stripe_events = raw_topic(app, settings, topics.stripe_events)
    quota_updates = raw_topic(app, settings, topics.quota_updates)
    deadletter = raw_topic(app, settings, topics.deadletter)
    customers = raw_table(app, settings, "customers")  # CustomerState JSON

    async def dead(event: Any, reason: str, detail: str) -> None:
        await send_deadletter(deadletter, event, reason=reason, detail=detail)

    resources = WorkerResources(settings, registry)
    usage = add_usage_agent(
        app,
        settings,
        customers=customers,
        quota_updates=quota_updates,
        deadletter=deadletter,
        registry=lambda: resources.registry,
        ready=resources.ready.wait,
        policy=policy,
    )

    add_grace_timer(app, settings, customers=customers, quota_updates=quota_updates, policy=policy)

    async def handle(event: Any) -> None:
        started = time.perf_counter()
        env = Envelope.from_headers(event.headers)
        await resources.ready.wait()
        assert resources.registry is not None  # set before ready
        tenant = resources.registry.get(env.tenant_id)
        if tenant is None:
            await dead(event, "unknown_tenant", env.tenant_id)
            return
        body = orjson.loads(event.value)
        customer = customer_of(body)
        if customer is None:
            return  # a type we do not act on; counted by the ingress and metrics
        key = f"{tenant.id}/{customer}".encode()
        fetched = None
        target = fetch_target(body)
        if reader is not None and target is not None:
            fetched = await reader.fetch(tenant, target.kind, target.id, not_before=env.received_at)
        # Read after the fetch: the usage agent may have written this key meanwhile, and
        # no await may sit between this read and the write below.
        stored = customers.get(key)
        state = CustomerState.model_validate_json(stored) if stored is not None else None
        outcome: Outcome = apply_event(
            state,
            body,
            tenant=tenant,
            fetched=None if fetched is None else fetched.object,
            fetched_at=None if fetched is None else fetched.at,
            source=Source(event.message.partition, event.message.offset),
            now=time.time(),
            policy=policy,
        )
        if outcome.state is not None:
            customers[key] = outcome.state.model_dump_json().encode()
            usage.remember_alias(outcome.state)
        await publish(quota_updates, outcome, event.message.partition)
        for letter in outcome.deadletters:
            await dead(event, letter.reason, letter.detail)
        log.debug(
            "event applied",
            extra={
                "tenant_id": tenant.id,
                "event_id": env.event_id,
                "event_type": env.event_type,
                "duplicate": outcome.duplicate,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )

    @app.agent(stripe_events, concurrency=1)
    async def billing(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        """Applies each Stripe event once in effect; a bad event goes to the dead letters."""
        async for event in stream.events():
            try:
                await handle(event)
            except Exception as exc:  # noqa: BLE001 - one bad event must not stop the agent
                await dead(event, "processing_error", f"{type(exc).__name__}: {exc}")
            yield None

    @app.service
    class Resources(mode.Service):
        """Opens the registry with the app and closes it and the Stripe reader after."""

        async def on_start(self) -> None:
            await resources.open()

        async def on_stop(self) -> None:
            await resources.close()
            if reader is not None:
                await reader.close()

    app.customers = customers  # type: ignore[attr-defined]
    return app
