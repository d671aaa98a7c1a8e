"""The usage agent: `usage.events` → `used` in the same `customers` table, once per batch.

Each record is one tenant's part of an edge batch (`tables.usage.UsageRecord`, key = tenant
id), so it lands in the tenant's partition, whose `customers` table partition this worker
holds (co-partitioned: same partition count, same key). What a record does is decided by
`streams.processing.usage.UsageProcessor` (aliases, `apply_usage` once per batch id,
threshold-coalesced quota records, meter jobs with deterministic identifiers); this
module wires it to Faust and runs the meter reporter beside it.

A record that can never apply (not a usage record, an unknown tenant) is dead-lettered by
the processor; a failure to write or send stops the worker (`SinkError`), so the record is
processed again and its meter jobs are produced, instead of being dead-lettered after its
state was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import mode

from quotaflow.registry import TenantRegistry
from quotaflow.settings import WorkerSettings
from quotaflow.topics import ensure_topics
from streams.faust_tuning import event_context
from streams.meter_client import MeterClient
from streams.meter_reporter import MeterReporter
from streams.processing.effects import Effects
from streams.processing.usage import UsageProcessor, meter_identifier
from streams.records import raw_topic, record_from
from streams.sink import Sink, stop_worker
from tables.policy import QuotaPolicy

__all__ = ["add_usage_agent", "meter_identifier", "meter_topic"]

log = logging.getLogger("quotaflow.worker.usage")

# Usage events processed whose changelog records and sends Kafka has not yet acknowledged:
# beyond this the agent waits (bounded memory, and bounded work to redo after a crash).
MAX_UNCONFIRMED = 1000


def meter_topic(settings: WorkerSettings) -> str:
    return settings.topics.meter_jobs


def add_usage_agent(
    app: faust.App,
    settings: WorkerSettings,
    *,
    sink: Sink,
    customers: Any,
    aliases: Any,
    registry: Callable[[], TenantRegistry | None],
    ready: Callable[[], Awaitable[object]],
    policy: QuotaPolicy,
) -> None:
    """Adds the usage agent (and, if `meter_enabled`, the meter reporter) to `app`.

    `registry()` gives the tenant registry once `await ready()` returned.
    """
    usage_events = raw_topic(app, settings, settings.topics.usage_events)
    processor = UsageProcessor(registry, policy, settings.usage_thresholds, time.time)

    @app.agent(usage_events, concurrency=1, name="usage")
    async def usage(stream: faust.StreamT[bytes]) -> None:
        """Applies each usage batch once in effect; a bad record goes to the dead letters.

        The stream is read without acknowledging (`noack`): each event is acknowledged by
        its confirmation task once Kafka holds its changelog record and its sends, so an
        offset is never committed past a `used` that is not durable. The next event is
        processed meanwhile; at most `MAX_UNCONFIRMED` wait for their confirmation.
        """
        events: Any = stream.noack()  # type: ignore[attr-defined]  # faust stubs lack it
        room = asyncio.Semaphore(MAX_UNCONFIRMED)
        confirming: set[asyncio.Task[None]] = set()

        async def confirm(event: Any, futures: list[Awaitable[Any]], effects: Effects) -> None:
            try:
                await sink.confirm(futures)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure here stops the worker
                await stop_worker(app, exc, "usage records not acknowledged by Kafka")
                return
            finally:
                room.release()
            await events.ack(event)
            sink.done(effects)
            for region, node in set(effects.spool_resets):
                log.warning(
                    "usage from a new spool incarnation of a node that reported before: "
                    "its spool was reset (usage it had not sent is lost) or forged",
                    extra={"region": region, "node_id": node},
                )

        waited = False
        try:
            async for event in events.events():
                if not waited:  # on the first event: see BillingPipeline.run
                    await ready()
                    waited = True
                record = record_from(event)
                await room.acquire()
                async with sink.turn:
                    with event_context(event):  # reads belong to a partition too
                        effects = processor.handle(customers, aliases, [record])
                    sink.write(effects, {record.partition: event})
                    futures = await sink.send(effects)
                task = asyncio.create_task(confirm(event, futures, effects), name="usage-confirm")
                confirming.add(task)
                task.add_done_callback(confirming.discard)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await stop_worker(app, exc, "usage agent stopped")
            raise
        finally:
            pending = list(confirming)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

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
                app.meter_reporter = reporter  # type: ignore[attr-defined]  # for /readyz
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
