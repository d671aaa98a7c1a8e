"""The notifier: `notifications` → each tenant endpoint that wants it, exactly in order.

Reads `notifications` in its own consumer group and routes each record to the queues of
the tenant's endpoints that want it (event type, threshold, feature; `qf-endpoint` on a
resend or test names one). Each endpoint has its own queue and task (`endpoint_queue`);
each tenant has its own attempt rate. The offset of a record is committed only when every
endpoint it was routed to has it delivered or in the dead letters (`offsets`), so a
restart loses nothing; it may deliver again what was delivered but not yet committed, under
the same `webhook-id` (receivers deduplicate on it, as Standard Webhooks asks).

Memory is bounded: past `QUOTAFLOW_NOTIFIER_ENDPOINT_QUEUE` notifications for one endpoint
the partitions feeding it pause (the tenants sharing them wait; the others do not), and
past `QUOTAFLOW_NOTIFIER_MAX_PENDING` in all, every partition pauses.

Errors by kind: a record that is not a notification, or one for a tenant whose record
cannot be read, goes to the dead letters; a dead letter or state write Kafka refuses
stops the notifier (its uncommitted records are read again after the restart).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiolimiter import AsyncLimiter
from pydantic import ValidationError

from quotaflow.health import ops_server
from quotaflow.registry import TenantRegistry
from quotaflow.settings import NotifierSettings
from streams.deadletter import deadletter_headers
from streams.notifier.delivery import Deliverer
from streams.notifier.endpoint_queue import EndpointQueue, Pending, RetryPolicy
from streams.notifier.metrics import NotifierMetrics
from streams.notifier.offsets import OffsetTracker
from streams.notifier.state import EndpointStates, write_state
from streams.offset_commit import commit_moved
from tables.notification import Notification
from tables.tenant import NotificationEndpoint

__all__ = ["ENDPOINT_HEADER", "RESEND_HEADER", "Notifier", "run_notifier"]

log = logging.getLogger("quotaflow.notifier")

ENDPOINT_HEADER = "qf-endpoint"  # a resend or test for one endpoint only
RESEND_HEADER = "qf-resend"  # deliver even if this notifier delivered the id already
START_TIMEOUT = 30.0
COMMIT_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
COMMIT_INTERVAL = 1.0
REMEMBERED_IDS = 100_000

Key = tuple[str, str]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._notifier.revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None


class Notifier:
    """Start, run until stopped or failed, stop (idempotent)."""

    def __init__(self, settings: NotifierSettings, registry: TenantRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = NotifierMetrics()
        self._deliverer = Deliverer(
            timeout=settings.notifier_timeout, allow_private=settings.notify_allow_private
        )
        self._policy = RetryPolicy(
            settings.notifier_retry_base,
            settings.notifier_retry_max_delay,
            settings.notifier_give_up_after,
        )
        self._states = EndpointStates(settings, self._state_changed)
        self._tracker = OffsetTracker()
        self._queues: dict[Key, EndpointQueue] = {}
        self._queue_tasks: dict[Key, asyncio.Task[None]] = {}
        self._limiters: dict[str, AsyncLimiter] = {}
        self._delivered: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._committed: dict[Hashable, int] = {}
        self._failed: asyncio.Future[BaseException] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._failed = asyncio.get_running_loop().create_future()
        settings = self.settings
        try:
            await self._deliverer.start()
            producer = AIOKafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap,
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=int(SEND_TIMEOUT * 1000),
            )
            self._producer = producer
            async with asyncio.timeout(START_TIMEOUT):
                await producer.start()
            await self._states.start(START_TIMEOUT)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=settings.kafka_bootstrap,
                group_id=settings.notifier_group,
                client_id=settings.notifier_group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=50,
            )
            consumer.subscribe([settings.topics.notifications], listener=_Rebalance(self))
            self._consumer = consumer
            async with asyncio.timeout(START_TIMEOUT):
                await consumer.start()
        except BaseException:
            await self.stop()
            raise
        for name, coro in (
            ("consume", self._consume()),
            ("commit", self._commit_loop()),
            ("states", self._states.follow()),
        ):
            self._track(asyncio.create_task(coro, name=f"notifier {name}"))
        log.info("notifier started", extra={"group": settings.notifier_group})

    async def stop(self) -> None:
        """Stops reading, stops the queues, commits what is settled, closes. Idempotent."""
        tasks, self._tasks = self._tasks, []
        if tasks:
            tasks[0].cancel()
            await asyncio.gather(tasks[0], return_exceptions=True)
        queue_tasks = list(self._queue_tasks.values())
        self._queue_tasks.clear()
        for task in queue_tasks:
            task.cancel()
        await asyncio.gather(*queue_tasks, return_exceptions=True)
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks[1:], return_exceptions=True)
        await self.commit()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
        await self._states.stop()
        await self._deliverer.stop()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception() or RuntimeError(f"{task.get_name()} ended")
        log.error("notifier task died", exc_info=exc, extra={"task": task.get_name()})
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(exc)

    async def wait_failed(self) -> BaseException:
        assert self._failed is not None
        return await self._failed

    def ready(self) -> bool:
        return (
            self._consumer is not None
            and bool(self._tasks)
            and not any(t.done() for t in self._tasks)
            and self._states.caught_up.is_set()
        )

    def readiness(self) -> dict[str, object]:
        return {
            "pending": self._tracker.open_count,
            "endpoints": len(self._queues),
            "disabled": len(self._states.all_disabled()),
        }

    # -- reading and routing --------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            for tp, records in batches.items():
                for record in records:
                    await self._route(tp, record)
            self._apply_pressure(consumer)
            self.metrics.pending.set(sum(len(q) for q in self._queues.values()))

    async def _route(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        headers = tuple(record.headers or ())
        try:
            notification = Notification.from_json(record.value)
        except (ValidationError, ValueError):
            await self._dead(tp, record.offset, record.value, headers, "bad_notification", "")
            self._tracker.read(tp, record.offset, 0)
            return
        tenant_id = notification.tenant_id
        tenant = self.registry.get(tenant_id)
        if tenant is None:
            if tenant_id in self.registry.unreadable():
                await self._dead(
                    tp, record.offset, record.value, headers, "tenant_unreadable", tenant_id
                )
            else:
                self.metrics.notifications.labels(outcome="unrouted").inc()
            self._tracker.read(tp, record.offset, 0)
            return
        only = _header(headers, ENDPOINT_HEADER)
        resend = _header(headers, RESEND_HEADER) is not None
        data = notification.data
        owed = 0
        for endpoint in tenant.notification_endpoints:
            if only is not None and endpoint.id != only:
                continue
            if only is None and not endpoint.wants(notification.type, data.threshold, data.feature):
                continue
            if not resend and (tenant_id, endpoint.id, notification.id) in self._delivered:
                self.metrics.notifications.labels(outcome="duplicate").inc()
                continue
            item = Pending(
                notification.id, record.value, notification.at, tp, record.offset, headers, resend
            )
            self._queue(tenant_id, endpoint).put(item)
            owed += 1
        if owed == 0 and only is None:
            self.metrics.notifications.labels(outcome="unrouted").inc()
        self._tracker.read(tp, record.offset, owed)

    def _queue(self, tenant_id: str, endpoint: NotificationEndpoint) -> EndpointQueue:
        key = (tenant_id, endpoint.id)
        queue = self._queues.get(key)
        if queue is None:
            limiter = self._limiters.get(tenant_id)
            if limiter is None:
                rate = self.settings.notifier_tenant_rate
                limiter = AsyncLimiter(rate, 1.0) if rate >= 1 else AsyncLimiter(1, 1.0 / rate)
                self._limiters[tenant_id] = limiter
            queue = EndpointQueue(
                tenant_id,
                endpoint.id,
                lookup=lambda: self._endpoint(tenant_id, endpoint.id),
                deliverer=self._deliverer,
                limiter=limiter,
                policy=self._policy,
                delivered=lambda item: self._settle_delivered(tenant_id, endpoint.id, item),
                metrics=self.metrics,
                seen=lambda item: (tenant_id, endpoint.id, item.notification_id) in self._delivered,
                give_up=lambda items, reason: self._give_up(tenant_id, endpoint.id, items, reason),
                disable=lambda reason: self._disable(tenant_id, endpoint.id, reason),
            )
            queue.disabled = self._states.disabled(tenant_id, endpoint.id) is not None
            self._queues[key] = queue
            task = asyncio.create_task(queue.run(), name=f"notifier {tenant_id}/{endpoint.id}")
            task.add_done_callback(self._task_done)
            self._queue_tasks[key] = task
        return queue

    def _endpoint(self, tenant_id: str, endpoint_id: str) -> NotificationEndpoint | None:
        tenant = self.registry.get(tenant_id)
        if tenant is None:
            return None
        return next((e for e in tenant.notification_endpoints if e.id == endpoint_id), None)

    def _apply_pressure(self, consumer: AIOKafkaConsumer) -> None:
        assigned = consumer.assignment()
        if self._tracker.open_count >= self.settings.notifier_max_pending:
            blocked = set(assigned)
        else:
            limit = self.settings.notifier_endpoint_queue
            blocked = {
                item.tp for q in self._queues.values() if len(q) >= limit for item in q.items
            }
        paused = consumer.paused()
        for tp in assigned:
            if tp in blocked and tp not in paused:
                consumer.pause(tp)
            elif tp not in blocked and tp in paused:
                consumer.resume(tp)

    # -- outcomes ---------------------------------------------------------------------------

    def _settle_delivered(self, tenant_id: str, endpoint_id: str, item: Pending) -> None:
        self.metrics.notifications.labels(outcome="delivered").inc()
        key = (tenant_id, endpoint_id, item.notification_id)
        self._delivered[key] = None
        self._delivered.move_to_end(key)
        while len(self._delivered) > REMEMBERED_IDS:
            self._delivered.popitem(last=False)
        self._tracker.settled(item.tp, item.offset)

    async def _give_up(
        self, tenant_id: str, endpoint_id: str, items: Sequence[Pending], reason: str
    ) -> None:
        for item in items:
            await self._dead(
                item.tp,
                item.offset,
                item.body,
                (*item.headers, (ENDPOINT_HEADER, endpoint_id.encode())),
                reason,
                f"{tenant_id}/{endpoint_id}",
            )
            self.metrics.notifications.labels(outcome="dead_lettered").inc()
            self._tracker.settled(item.tp, item.offset)

    async def _dead(
        self,
        tp: Any,
        offset: int,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
        reason: str,
        detail: str,
    ) -> None:
        producer = self._producer
        assert producer is not None
        log.warning("notification dead-lettered", extra={"reason": reason, "detail": detail})
        async with asyncio.timeout(SEND_TIMEOUT):
            await producer.send_and_wait(
                self.settings.topics.deadletter,
                key=value and _tenant_key(value),
                value=value,
                headers=deadletter_headers(
                    headers,
                    reason=reason,
                    detail=detail,
                    source_topic=tp.topic,
                    partition=tp.partition,
                    offset=offset,
                ),
                partition=tp.partition,
            )

    async def _disable(self, tenant_id: str, endpoint_id: str, reason: str) -> None:
        producer = self._producer
        assert producer is not None
        log.error(
            "notification endpoint disabled",
            extra={"tenant": tenant_id, "endpoint": endpoint_id, "reason": reason},
        )
        self.metrics.disabled.labels(reason=reason).inc()
        self._states.mark(tenant_id, endpoint_id, reason)
        await write_state(
            producer,
            self.settings,
            tenant_id,
            endpoint_id,
            disabled=True,
            reason=reason,
            actor="notifier",
        )

    def _state_changed(self, tenant_id: str, endpoint_id: str, disabled: bool) -> None:
        queue = self._queues.get((tenant_id, endpoint_id))
        if queue is None:
            return
        if disabled:
            queue.disabled = True
        else:
            queue.enable()

    async def revoked(self, revoked: list[TopicPartition]) -> None:
        await self.commit(set(revoked))
        for tp in revoked:
            for queue in self._queues.values():
                queue.abandon(tp)
            self._tracker.forget(tp)
            self._committed.pop(tp, None)

    # -- commits ----------------------------------------------------------------------------

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        await commit_moved(
            consumer,
            self._tracker.committable(),
            self._committed,
            only=only,
            timeout=COMMIT_TIMEOUT,
            log=log,
        )

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            await self.commit()


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", "replace")
    return None


def _tenant_key(value: bytes) -> bytes | None:
    try:
        return Notification.from_json(value).tenant_id.encode()
    except (ValidationError, ValueError):
        return None


async def run_notifier(
    settings: NotifierSettings, registry: TenantRegistry, stop: asyncio.Event
) -> None:
    """Runs the notifier until `stop`; `/healthz`, `/readyz`, `/metrics` meanwhile on
    QUOTAFLOW_NOTIFIER_HOST:QUOTAFLOW_NOTIFIER_PORT."""
    notifier = Notifier(settings, registry)
    async with ops_server(
        settings.notifier_host,
        settings.notifier_port,
        notifier.ready,
        notifier.metrics.registry,
        detail=notifier.readiness,
    ):
        await notifier.start()
        try:
            stopping = asyncio.create_task(stop.wait())
            failing = asyncio.create_task(notifier.wait_failed())
            try:
                done, _ = await asyncio.wait(
                    {stopping, failing}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (stopping, failing):
                    task.cancel()
                await asyncio.gather(stopping, failing, return_exceptions=True)
            if failing in done:
                raise failing.result()
        finally:
            await notifier.stop()
