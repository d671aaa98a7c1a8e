"""Carries a processor's `Effects` out through Faust: table writes, then sends.

Writes are synchronous and happen first, in the same step as the processor's reads (no
await in between), so the billing and usage agents, which share the `customers` table in
one event loop, never overwrite each other. Each write is made under the event of its
partition (`event_context`): Faust files a table write under the current event's
partition.

A quota record is sent only once the state that produced it is in the changelog (the
changelog sends of the turn are awaited first): otherwise a worker killed between the two would
recover an older state than it had published, and its next record for that customer
could carry a version already used (seen in `tests/reliability/test_worker_crash.py`).
Tenant notifications (`notifications`, keyed by tenant) wait for the same barrier: the
marks that say a notification was made are in the changelog before it reaches Kafka, and
the input that made it, if reprocessed, re-sends it with the same id
(`tables.notifications.reemit`). Meter jobs and dead letters need no barrier: a
reprocessed event makes the same ones.

The three agents (billing, usage, grace) write the same customers, so each holds `turn`
from its state reads to its last send: versions are computed, written and sent in one
order, and a record never follows a newer one of the same customer into the topic.

Sends are issued in the order of the batches (so the newest version of a quota key is
also the last record of that key in the compacted topic), and the broker's
acknowledgement of every send of a batch, and of every changelog record of its writes, is
awaited (`confirm`) before the batch's events are acknowledged: an offset is committed
only past events whose states, quota records, meter jobs and dead letters are in Kafka.
Every agent confirms, the usage and grace agents too, whether or not the batch
published anything. A send that fails (after the producer's own retries and its
request timeout) is an infrastructure failure, never the input's fault: `SinkError`
stops the worker, and its events are processed again from the last commit. Nothing is
dead-lettered because Kafka was away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust

from streams.deadletter import deadletter_headers
from streams.faust_tuning import event_context
from streams.processing.effects import Effects
from tables.notification import NOTIFICATION_SCHEMA
from tables.quota import QUOTA_UPDATE_SCHEMA
from wire import SCHEMA_HEADER

log = logging.getLogger("quotaflow.worker.sink")


class SinkError(RuntimeError):
    """Kafka refused or did not acknowledge the records of processed events."""


async def stop_worker(app: faust.App, exc: BaseException, what: str) -> None:
    """An agent cannot go on (its effects are not in Kafka, or its own task died): stop
    the whole worker, so its unacknowledged events are processed again after a restart,
    rather than let Faust restart the agent past them."""
    log.error("%s; stopping the worker", what, exc_info=exc)
    await app.crash(exc)


class Sink:
    """Table writes and topic sends of the worker's agents."""

    def __init__(
        self,
        *,
        customers: Any,
        aliases: Any,
        quota_updates: faust.TopicT,
        deadletter: faust.TopicT,
        meter_jobs: faust.TopicT | None = None,
        notifications: faust.TopicT | None = None,
        observe: Callable[[Effects], None] | None = None,
    ) -> None:
        self._customers = customers
        self._aliases = aliases
        self._quota_updates = quota_updates
        self._deadletter = deadletter
        self._meter_jobs = meter_jobs
        self._notifications = notifications
        self._observe = observe
        self._changelog: list[Any] = []  # changelog sends of the current turn
        # Held from an agent's state reads to its last send (created in the worker's loop).
        self._turn: asyncio.Lock | None = None

    @property
    def turn(self) -> asyncio.Lock:
        """Held from the processor's reads to the last send of what it decided."""
        if self._turn is None:
            self._turn = asyncio.Lock()
        return self._turn

    def write(self, effects: Effects, events: Mapping[int, Any]) -> None:
        """Table writes; `events` names one Faust event per partition written to."""
        self._changelog = []
        for table, writes in ((self._customers, effects.states), (self._aliases, effects.aliases)):
            for key, (partition, value) in writes.items():
                with event_context(events[partition]):
                    table[key] = value
            take = getattr(table, "take_sent", None)
            if take is not None:
                self._changelog.extend(take())

    async def send(self, effects: Effects) -> list[Awaitable[Any]]:
        """Hands every record of `effects` to the producer, in order; returns their
        delivery futures, the changelog sends of the turn's writes first. Each send returns
        once the record is in the producer's batch (aiokafka keeps it through a broker
        outage and retries), not once delivered.

        The changelog futures are returned even when nothing is published: an event is
        acknowledged only once its state is in the changelog. Faust's commit is no such
        barrier (its producer flush gives up after 0.1 s without progress and misses the
        record its buffer task holds), so a usage batch that published nothing could have
        its offset committed before its `used` was in Kafka, and a worker killed then lost
        it (`tests/reliability/test_worker_crash.py` under load)."""
        changelog, self._changelog = self._changelog, []
        if not (
            effects.updates or effects.meter_jobs or effects.deadletters or effects.notifications
        ):
            return list(changelog)
        try:
            if (effects.updates or effects.notifications) and changelog:
                await asyncio.gather(*changelog)
            return [*changelog, *await self._send_all(effects)]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise SinkError(f"Kafka refused the worker's records: {exc!r}") from exc

    @staticmethod
    async def confirm(futures: list[Awaitable[Any]]) -> None:
        """Waits until Kafka acknowledged every send (bounded by the producer's timeout)."""
        if not futures:
            return
        try:
            await asyncio.gather(*futures)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise SinkError(f"Kafka did not take the worker's records: {exc!r}") from exc

    def done(self, effects: Effects) -> None:
        """Kafka has every record of `effects`: count them."""
        if self._observe is not None:
            self._observe(effects)

    async def _send_all(self, effects: Effects) -> list[Awaitable[Any]]:
        futures: list[Awaitable[Any]] = []
        for partition, update in effects.quota_updates():
            futures.append(
                await self._quota_updates.send(
                    key=update.key.encode(),
                    value=update.to_json(),
                    partition=partition,
                    headers=[(SCHEMA_HEADER, QUOTA_UPDATE_SCHEMA)],
                )
            )
        if self._notifications is not None:
            # After the quota records of the turn, and like them only once the changelog
            # holds the marks that say they were made (`send` awaits it first).
            for partition, notification in effects.notifications:
                futures.append(
                    await self._notifications.send(
                        key=notification.tenant_id.encode(),
                        value=notification.to_json(),
                        partition=partition,
                        headers=[(SCHEMA_HEADER, NOTIFICATION_SCHEMA)],
                    )
                )
        if self._meter_jobs is not None:
            for job in effects.meter_jobs:
                sent = await self._meter_jobs.send(
                    key=job.key, value=job.value, partition=job.partition
                )
                futures.append(sent)
        for letter in effects.deadletters:
            record = letter.record
            log.warning(
                "dead letter",
                extra={"reason": letter.reason, "detail": letter.detail[:200]},
            )
            futures.append(
                await self._deadletter.send(
                    key=record.key,
                    value=record.value,
                    headers=deadletter_headers(
                        record.headers,
                        reason=letter.reason,
                        detail=letter.detail,
                        source_topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                    ),
                    partition=record.partition,
                )
            )
        return futures
