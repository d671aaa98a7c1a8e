"""Grace that ends by time alone: a past-due customer turns `blocked` with no new event.

A quota in `grace` changes when `grace_until` passes, but nothing arrives to say so: Stripe
sends its next event days later, if ever. Downstream subscribers of `quota.updates` must
still see the change when it happens, not at the next input.

A Faust timer cannot write a RocksDB table (a table write needs the event whose partition
it belongs to), so the change travels through a topic like any other input:

1. Every `grace_check_interval` seconds each worker scans the customers it holds. Only a
   value that mentions `past_due` is parsed, so the scan stays cheap with a million keys.
   For each customer whose last update says `grace` and whose `grace_deadline` has
   passed, it sends a tick to `quota.ticks`: key = tenant id (so the tick lands in the
   tenant's partition, which this worker holds, co-partitioned with `customers`), value =
   the customer's table key.
2. The tick agent hands each tick to `streams.processing.grace.GraceProcessor`, which
   re-reads the state and applies `tables.outcome.reevaluate` at its own clock; the state
   is written and a quota update published only if the status changed. A tick processed
   twice, or after the customer paid, changes nothing: the evaluation is a pure function
   of the state and the time, so ticks need no deduplication of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import faust

from quotaflow.registry import TenantRegistry
from quotaflow.settings import WorkerSettings
from streams.faust_tuning import event_context
from streams.processing.grace import GraceProcessor, due_for_blocking
from streams.records import raw_topic, record_from
from streams.sink import Sink, stop_worker
from tables.billing import CustomerState
from tables.policy import QuotaPolicy

__all__ = ["add_grace_timer", "due_for_blocking"]

log = logging.getLogger("quotaflow.grace")

# Cheap pre-filter: a customer can only be in grace with a past_due subscription.
PAST_DUE = b'"past_due"'


def add_grace_timer(
    app: faust.App,
    settings: WorkerSettings,
    *,
    sink: Sink,
    customers: Any,
    policy: QuotaPolicy,
    registry: Callable[[], TenantRegistry | None] | None = None,
) -> None:
    """The timer that finds ended grace periods and the agent that applies them
    (`registry`: the tenants, for the notifications a block makes)."""
    ticks = raw_topic(app, settings, settings.topics.quota_ticks)
    processor = GraceProcessor(policy, time.time, registry)

    @app.timer(interval=settings.grace_check_interval, name="grace-scan")  # type: ignore[untyped-decorator]
    async def scan() -> None:
        now = time.time()
        due: list[bytes] = []
        for key, value in customers.items():
            if value is None or PAST_DUE not in value:
                continue
            state = CustomerState.model_validate_json(value)
            if due_for_blocking(state, now, policy):
                due.append(key)
        for key in due:
            await ticks.send(key=key.split(b"/", 1)[0], value=key)
        log.debug("grace scan", extra={"due": len(due)})
        if due:
            log.info("grace ended", extra={"customers": len(due)})

    @app.agent(ticks, concurrency=1, name="grace")
    async def grace(stream: faust.StreamT[bytes]) -> None:
        """Re-evaluates each ticked customer; a tick for a gone customer is ignored."""
        try:
            async for event in stream.events():
                record = record_from(event)
                async with sink.turn:
                    with event_context(event):  # reads belong to a partition too
                        effects = processor.handle(customers, [record])
                    sink.write(effects, {record.partition: event})
                    futures = await sink.send(effects)
                # Acknowledged (when the stream takes the next tick) only once Kafka holds
                # the state and the quota record: ticks are rare, so no pipelining.
                await sink.confirm(futures)
                sink.done(effects)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await stop_worker(app, exc, "grace agent stopped")
            raise
