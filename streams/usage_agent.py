"""The usage agent: `usage.events` → `used` in the same `customers` table, once per batch.

Each record is one tenant's part of an edge batch (`tables.usage.UsageRecord`, key = tenant
id), so it lands in the tenant's partition, whose `customers` table partition this worker
holds (co-partitioned: same partition count, same key). Per item:

1. The customer id is what the edge knows: the Stripe id, or the tenant's alias. The
   `aliases` table (`tenant/alias` → Stripe id, written by the billing agent whenever a
   customer state carries an alias, in the same partition) maps it back; the table key
   is always `tenant/stripe_customer_id`.
2. `apply_usage` adds the units unless the batch id (`node:seq`) or the usage.events
   offset was already applied; both guards live in the value they guard.
3. The state is written (no await between read and write: the billing agent, in the same
   event loop, reads after its Stripe fetch, so neither overwrites the other).
4. A quota update is sent only when `apply_usage` decides it matters (status change or a
   threshold crossing, `usage_thresholds`); a reprocessed offset re-sends the current one.
5. One meter job per meter of the customer (`meters_of`) goes to `meter.jobs`, identifier
   `qf_` + blake2b(tenant, customer, meter, batch id): the same batch can only ever make
   the same identifier. A reprocessed offset re-sends its jobs (the crash may have come
   between the table write and the send); the identifier makes that harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import faust
import mode
import orjson
from pydantic import ValidationError

from quotaflow.registry import TenantRegistry
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from streams.deadletter import send_deadletter
from streams.meter_client import MeterClient
from streams.meter_reporter import MeterReporter
from streams.records import publish, raw_table, raw_topic
from tables.billing_state import CustomerState
from tables.outcome import Source
from tables.policy import QuotaPolicy
from tables.usage import UsageRecord, apply_usage, meters_of

__all__ = [
    "UsageWiring",
    "add_usage_agent",
    "meter_identifier",
    "meter_topic",
]

log = logging.getLogger("quotaflow.worker.usage")


def meter_topic(settings: Settings) -> str:
    return settings.topics.meter_jobs


def meter_identifier(tenant_id: str, stripe_customer_id: str, meter: str, batch_id: str) -> str:
    """Deterministic: one usage batch of one customer on one meter is one meter event."""
    raw = "\x1f".join((tenant_id, stripe_customer_id, meter, batch_id)).encode()
    return "qf_" + hashlib.blake2b(raw, digest_size=16).hexdigest()


class UsageWiring:
    """What `create_app` keeps: the alias table and the hook the billing agent calls."""

    def __init__(self, aliases: Any) -> None:
        self.aliases = aliases

    def remember_alias(self, state: CustomerState | None) -> None:
        """Called by the billing agent after it stored `state` (inside its event)."""
        if state is None or not state.alias:
            return
        key = f"{state.tenant_id}/{state.alias}".encode()
        value = state.stripe_customer_id.encode()
        if self.aliases.get(key) != value:
            self.aliases[key] = value


def add_usage_agent(
    app: faust.App,
    settings: Settings,
    *,
    customers: Any,
    quota_updates: faust.TopicT,
    deadletter: faust.TopicT,
    registry: Callable[[], TenantRegistry | None],
    ready: Callable[[], Awaitable[object]],
    policy: QuotaPolicy,
) -> UsageWiring:
    """Adds the usage agent (and, if `meter_enabled`, the meter reporter) to `app`.

    `registry()` gives the tenant registry once `await ready()` returned.
    """
    usage_events = raw_topic(app, settings, settings.topics.usage_events)
    meter_jobs = raw_topic(app, settings, meter_topic(settings))
    aliases = raw_table(app, settings, "aliases")
    thresholds = tuple(settings.usage_thresholds)
    wiring = UsageWiring(aliases)

    async def dead(event: Any, reason: str, detail: str) -> None:
        await send_deadletter(deadletter, event, reason=reason, detail=detail)

    async def handle(event: Any) -> None:
        try:
            record = UsageRecord.model_validate_json(event.value)
        except ValidationError as exc:
            await dead(event, "bad_usage_record", str(exc))
            return
        await ready()
        reg = registry()
        tenant = reg.get(record.tenant_id) if reg is not None else None
        if tenant is None:
            await dead(event, "unknown_tenant", record.tenant_id)
            return
        partition, offset = event.message.partition, event.message.offset
        source = Source(partition, offset)
        now = time.time()
        for item in record.items:
            mapped = aliases.get(f"{tenant.id}/{item.customer_id}".encode())
            stripe_id = mapped.decode() if mapped is not None else item.customer_id
            key = f"{tenant.id}/{stripe_id}".encode()
            stored = customers.get(key)
            state = CustomerState.model_validate_json(stored) if stored is not None else None
            reprocessed = state is not None and offset <= state.usage_offsets.get(partition, -1)
            outcome = apply_usage(
                state,
                tenant_id=tenant.id,
                customer_id=stripe_id,
                batch_id=record.batch_id,
                units=item.units,
                source=source,
                now=now,
                policy=policy,
                thresholds=thresholds,
            )
            if outcome.state is not None:
                customers[key] = outcome.state.model_dump_json().encode()
            await publish(quota_updates, outcome, partition)
            current = outcome.state or state
            if current is None or (outcome.duplicate and not reprocessed):
                continue
            for meter in meters_of(current, tenant):
                job = {
                    "tenant_id": tenant.id,
                    "stripe_customer_id": stripe_id,
                    "event_name": meter,
                    "value": item.units,
                    "identifier": meter_identifier(tenant.id, stripe_id, meter, record.batch_id),
                    "timestamp": int(record.received_at),
                    "batch_id": record.batch_id,
                }
                await meter_jobs.send(
                    key=f"{tenant.id}/{stripe_id}/{meter}".encode(),
                    value=_dumps(job),
                    partition=partition,
                )

    @app.agent(usage_events, concurrency=1, name="usage")
    async def usage(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        """Applies each usage batch once in effect; a bad record goes to the dead letters."""
        async for event in stream.events():
            try:
                await handle(event)
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the agent
                await dead(event, "processing_error", f"{type(exc).__name__}: {exc}")
            yield None

    meter_enabled = settings.meter_enabled

    @app.service
    class UsageResources(mode.Service):
        """Creates `meter.jobs` and runs the meter reporter beside the agents."""

        reporter: MeterReporter | None = None
        _opening: asyncio.Task[None] | None = None

        async def on_start(self) -> None:
            # In the background: the billing agent waits for the registry service, which
            # starts after this one, and must not wait for a topic it does not use.
            self._opening = asyncio.create_task(self._open(), name="usage-resources")

        async def _open(self) -> None:
            await ensure_topics(settings)
            if meter_enabled:
                reporter = MeterReporter(
                    bootstrap=settings.kafka_bootstrap,
                    topic=meter_topic(settings),
                    group_id=f"{settings.app_id}-meter",
                    registry=registry,
                    ready=ready,
                    client=MeterClient(
                        api_base=settings.stripe_api_base,
                        rates={"live": settings.meter_rate_live, "test": settings.meter_rate_test},
                    ),
                    max_in_flight=settings.meter_max_in_flight,
                )
                self.reporter = reporter
                await reporter.start()

        async def on_stop(self) -> None:
            opening, self._opening = self._opening, None
            if opening is not None:
                opening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await opening
                if not opening.cancelled() and opening.exception() is not None:
                    log.error("usage resources failed to open", exc_info=opening.exception())
            if self.reporter is not None:
                await self.reporter.stop()
                self.reporter = None

    return wiring


def _dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)
