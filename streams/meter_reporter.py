"""The meter reporter: `meter.jobs` → Stripe Billing meter events, resumable with no gap.

The usage agent writes one job per (applied usage batch, customer, meter) to `meter.jobs`
(key `tenant/customer/meter`, the tenant's partition), with a deterministic identifier.
This consumer sends them through `MeterClient`:

- At most one call in flight per (tenant, customer, meter): jobs of one key queue behind
  each other in offset order; different keys run concurrently up to `max_in_flight`, each
  attempt through the Stripe account's token bucket.
- Progress is the consumer group's committed offset per partition (kept by Kafka in its
  compacted `__consumer_offsets` topic): the lowest offset not yet finished. Nothing
  before it is ever sent again; a restart re-sends at most the jobs that were in flight or
  finished out of order above it, under the same identifiers, which Stripe deduplicates
  (and the idempotency key answers with the first result). So: no gap, no double billing.
- Fetching pauses while `max_queued` jobs wait, so memory stays bounded during a Stripe
  outage; a job whose tenant has no Stripe key, or that Stripe refuses for good, is
  counted and logged (the usage is still in the quota; Stripe's refusal says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from quotaflow.registry import TenantRegistry
from streams.meter_client import MeterClient, MeterJob

__all__ = ["MeterReporter"]

log = logging.getLogger("quotaflow.meter")

COMMIT_INTERVAL = 0.5
STOP_BUDGET = 5.0


class _Progress:
    """Per partition: offsets handed out and not finished; the commit point is below them."""

    def __init__(self) -> None:
        self.open: dict[TopicPartition, set[int]] = {}
        self.next: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}

    def taken(self, tp: TopicPartition, offset: int) -> None:
        self.open.setdefault(tp, set()).add(offset)
        self.next[tp] = max(self.next.get(tp, 0), offset + 1)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        self.open.get(tp, set()).discard(offset)

    def commit_points(self) -> dict[TopicPartition, int]:
        points = {}
        for tp, nxt in self.next.items():
            pending = self.open.get(tp)
            point = min(pending) if pending else nxt
            if self.committed.get(tp) != point:
                points[tp] = point
        return points

    def forget(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self.open.pop(tp, None)
            self.next.pop(tp, None)
            self.committed.pop(tp, None)


class MeterReporter:
    """Consumes `meter.jobs` and reports each job once in effect; `start`/`stop` mirror."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group_id: str,
        registry: Callable[[], TenantRegistry | None],
        client: MeterClient,
        ready: Callable[[], Awaitable[object]] | None = None,
        max_in_flight: int = 64,
        max_queued: int = 5_000,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._group_id = group_id
        self._registry = registry
        self._client = client
        self._ready = ready
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_queued = max_queued
        self._queues: dict[tuple[str, str, str], deque[tuple[TopicPartition, int, MeterJob]]] = {}
        self._workers: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._queued = 0
        self._progress = _Progress()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.outcomes: dict[str, int] = {}

    async def start(self) -> None:
        if self._task is not None:
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        consumer.subscribe([self._topic], listener=_Listener(self))
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="meter-reporter")
        self._task.add_done_callback(self._done)

    async def stop(self) -> None:
        """Lets in-flight calls finish (bounded), commits, closes. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        workers = list(self._workers.values())
        if workers:
            _, late = await asyncio.wait(workers, timeout=STOP_BUDGET)
            for worker in late:
                worker.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(KafkaError, TimeoutError):
                await self.commit(consumer)
            await consumer.stop()
        await self._client.close()

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("meter reporter died", exc_info=task.exception())

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        if self._ready is not None:
            await self._ready()  # no job is judged against a half-loaded registry
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        while True:
            if self._queued >= self._max_queued:
                await asyncio.sleep(0.05)
            else:
                batches = await consumer.getmany(
                    timeout_ms=100, max_records=self._max_queued - self._queued
                )
                for tp, records in batches.items():
                    for record in records:
                        self._take(tp, record.offset, record.value)
            if loop.time() - last_commit >= COMMIT_INTERVAL:
                last_commit = loop.time()
                try:
                    async with asyncio.timeout(10.0):
                        await self.commit(consumer)
                except (KafkaError, TimeoutError) as exc:
                    log.warning("meter progress commit failed: %s", type(exc).__name__)

    async def commit(self, consumer: AIOKafkaConsumer) -> None:
        points = self._progress.commit_points()
        assigned = consumer.assignment()
        points = {tp: off for tp, off in points.items() if tp in assigned}
        if points:
            await consumer.commit(points)
            self._progress.committed.update(points)

    def _take(self, tp: TopicPartition, offset: int, value: bytes | None) -> None:
        self._progress.taken(tp, offset)
        try:
            doc = orjson.loads(value or b"")
            job = MeterJob(**doc)
        except (orjson.JSONDecodeError, TypeError) as exc:
            log.error("malformed meter job skipped", extra={"offset": offset, "error": str(exc)})
            self._count("malformed")
            self._progress.finished(tp, offset)
            return
        queue = self._queues.setdefault(job.key, deque())
        queue.append((tp, offset, job))
        self._queued += 1
        if job.key not in self._workers:
            worker = asyncio.create_task(self._drain(job.key), name="meter-key")
            self._workers[job.key] = worker

    async def _drain(self, key: tuple[str, str, str]) -> None:
        """Sends one key's jobs in order, one at a time."""
        queue = self._queues[key]
        try:
            while queue:
                tp, offset, job = queue[0]
                async with self._slots:
                    outcome = await self._send(job)
                queue.popleft()
                self._queued -= 1
                self._count(outcome)
                self._progress.finished(tp, offset)
        finally:
            self._workers.pop(key, None)
            if not queue:
                self._queues.pop(key, None)

    async def _send(self, job: MeterJob) -> str:
        registry = self._registry()
        tenant = registry.get(job.tenant_id) if registry is not None else None
        if tenant is None:
            log.error("meter job of an unknown tenant skipped", extra={"tenant_id": job.tenant_id})
            return "unknown_tenant"
        return await self._client.send(tenant, job)

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def revoked(self, tps: set[TopicPartition]) -> None:
        self._progress.forget(tps)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, reporter: MeterReporter) -> None:
        self._reporter = reporter

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        consumer = self._reporter._consumer
        if consumer is not None:
            with contextlib.suppress(KafkaError):
                await self._reporter.commit(consumer)
        self._reporter.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None
