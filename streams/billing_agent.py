"""The billing agent: Faust's stream in, per-customer lanes in the middle, the sink out.

Faust runs the agent with `concurrency=1` (more can commit past unfinished work); the
concurrency lives inside it. The stream is read without acknowledging (`noack`), each
event parsed and admitted to its customer's lane (`streams/lanes.py`), where its Stripe
read starts at once. A second task, the applier, takes whatever is ready — each
customer's events in partition order — applies it as one batch (`BillingProcessor`: one
state read and write per customer, one quota record per key), writes the tables, issues
the sends in batch order, and hands the batch to a confirmation task that waits for
Kafka's acknowledgement and only then acknowledges the batch's events. Faust commits per
partition only up to the first unacknowledged offset, so a commit never passes an event
that is still waiting for Stripe, and a crash replays from there (the state dedupes).

A failure to write or send stops the worker (`SinkError` crashes the app) rather than
dead-lettering events whose state was already written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from quotaflow.registry import TenantRegistry
from streams.faust_tuning import event_context
from streams.lanes import Lanes
from streams.processing.billing import BillingEvent, BillingProcessor, FetchResult, Rejected, parse
from streams.processing.effects import Effects, Record
from streams.records import record_from
from streams.sink import Sink, stop_worker
from streams.stripe_client import StripeReader

log = logging.getLogger("quotaflow.worker.billing")

# A batch: at most this many ready events, gathered for at most this long.
MAX_BATCH = 1000
BATCH_WAIT = 0.005
# Loop turns without a new event after which the reader counts as caught up (one stream
# step takes a few turns).
IDLE_TURNS = 8


def reader_fetch(reader: StripeReader) -> Callable[[BillingEvent], Awaitable[FetchResult]]:
    """The lanes' fetch: the event's target object, fetched after the event arrived."""

    async def fetch(event: BillingEvent) -> FetchResult:
        target = event.target
        assert target is not None  # the lanes fetch only events that name one
        return await reader.fetch(
            event.tenant, target.kind, target.id, not_before=event.envelope.received_at
        )

    return fetch


class BillingPipeline:
    """One per worker app: `run(stream)` is the agent's body."""

    def __init__(
        self,
        app: faust.App,
        *,
        customers: Any,
        aliases: Any,
        sink: Sink,
        processor: BillingProcessor,
        lanes: Lanes,
        registry: Callable[[], TenantRegistry | None],
        ready: Callable[[], Awaitable[object]],
    ) -> None:
        self._app = app
        self._customers = customers
        self._aliases = aliases
        self._sink = sink
        self._processor = processor
        self.lanes = lanes
        self._registry = registry
        self._ready = ready
        self._rejected: list[tuple[Record, Rejected, Any]] = []
        self._confirming: set[asyncio.Task[None]] = set()

    async def run(self, stream: Any) -> None:
        """Admits every event of `stream`; the applier task does the rest."""
        # Iterate at once and wait for the registry on the first event, as Faust expects
        # of an agent: a stream first iterated after recovery resumed the streams was
        # never fed (a worker restarted on a filled changelog took no event).
        events = stream.noack()
        applier: asyncio.Task[None] | None = None
        registry: TenantRegistry | None = None
        try:
            async for event in events.events():
                if applier is None:
                    await self._ready()
                    registry = self._registry()
                    applier = asyncio.create_task(self._apply_loop(events), name="billing-applier")
                elif applier.done():
                    applier.result()  # re-raises what stopped it
                assert registry is not None  # set before ready
                record = record_from(event)
                parsed = parse(record, registry)
                if parsed is None:
                    await events.ack(event)  # a type we do not act on
                    self._sink.done(Effects(outcomes={"unchanged": 1}))
                elif isinstance(parsed, Rejected):
                    self._rejected.append((record, parsed, event))
                    self.lanes.wake()
                else:
                    await self.lanes.admit(parsed, event)
        finally:
            if applier is not None:
                applier.cancel()
                await asyncio.gather(applier, return_exceptions=True)
            await self.lanes.close()
            confirming = list(self._confirming)
            for task in confirming:
                task.cancel()
            await asyncio.gather(*confirming, return_exceptions=True)

    async def _apply_loop(self, events: Any) -> None:
        try:
            while True:
                await self.lanes.wait_ready()
                await self._gather_batch()
                ready = self.lanes.take_ready()
                rejected, self._rejected = self._rejected, []
                if ready or rejected:
                    await self._apply(events, ready, rejected)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await stop_worker(self._app, exc, "billing applier stopped")
            raise

    async def _gather_batch(self) -> None:
        """Lets the reader admit what Faust already holds before applying, so a burst is
        applied (and produced) in batches rather than one event per wake-up.

        Each stream step suspends the reader several times, which would wake this task
        after every event: it yields for as long as the reader keeps admitting, up to
        `MAX_BATCH` ready events or `BATCH_WAIT` seconds. An idle pipeline pays a few
        loop turns; a burst gets batches, and Kafka one produce request per batch.
        """
        deadline = time.monotonic() + BATCH_WAIT
        lanes = self.lanes
        while lanes.ready_count < MAX_BATCH and time.monotonic() < deadline:
            before = lanes.admitted
            for _ in range(IDLE_TURNS):
                await asyncio.sleep(0)
            if lanes.admitted == before:
                return

    async def _apply(
        self,
        events: Any,
        ready: list[tuple[BillingEvent, FetchResult, Any]],
        rejected: list[tuple[Record, Rejected, Any]],
    ) -> None:
        handles = [h for *_, h in ready] + [h for *_, h in rejected]
        by_partition: dict[int, Any] = {}
        for handle in handles:
            by_partition.setdefault(handle.message.partition, handle)
        by_partition_items: dict[int, list[tuple[BillingEvent, FetchResult]]] = {}
        for event, result, _ in ready:
            by_partition_items.setdefault(event.record.partition, []).append((event, result))
        async with self._sink.turn:
            effects = Effects()
            for record, why, _ in rejected:
                self._processor.reject(effects, record, why)
            for partition, items in by_partition_items.items():
                # Reads, like writes, belong to a partition: RocksDB looks a key up in the
                # current event's partition, and a context-free read misses partitions
                # whose store is not open yet (a restarted worker saw customers as new).
                with event_context(by_partition[partition]):
                    self._processor.apply(self._customers, self._aliases, items, effects)
            # No await between the processor's reads above and these writes.
            self._sink.write(effects, by_partition)
            futures = await self._sink.send(effects)
        task = asyncio.create_task(self._confirm(events, futures, handles, effects))
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)

    async def _confirm(
        self, events: Any, futures: list[Awaitable[Any]], handles: list[Any], effects: Effects
    ) -> None:
        try:
            await self._sink.confirm(futures)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here stops the worker
            await stop_worker(self._app, exc, "records not acknowledged by Kafka")
            return
        for handle in handles:
            await events.ack(handle)
        self._sink.done(effects)
