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
  outage; a job that Stripe refuses for good (a 400 on its content), or whose tenant was
  deleted, is counted and logged (the usage is still in the quota; the refusal says why).
- A job that cannot be sent for a reason that can pass parks its tenant
  (`streams/meter_parking.py`: record unreadable here, no Stripe key, key refused 401/403):
  its jobs wait (at most `park_limit` in memory, the rest re-read later by seeking back),
  the other tenants' jobs flow, and the partition's commit point never passes a parked
  job, so a restart re-reads it. Retried with backoff, and at once when the registry says
  the tenant's record changed.

Parking and Stripe's identifier window: while a tenant is parked, its partition's commit
point stays at its oldest parked job, and the jobs of other tenants finished above it are
known done only in memory. A restart (or rebalance) re-sends them under their
identifiers; Stripe deduplicates those for at least 24 h. So a restart while a tenant has
been parked for more than ~24 h can bill another tenant's usage twice: the alerts fire
after 15 min and, critical, after 12 h, and README says what to do before then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from quotaflow.registry import TenantRegistry
from streams.meter_client import MeterClient, MeterJob
from streams.meter_parking import PARK_REASONS, Entry, Parking
from streams.meter_progress import Progress

__all__ = ["MeterReporter"]

log = logging.getLogger("quotaflow.meter")

COMMIT_INTERVAL = 0.5
STOP_BUDGET = 5.0
MAX_LISTED = 20  # parked tenants listed in status()
_REPLAY = "\x00replay"  # floor owner of a partition being re-read (not a tenant id)


@dataclass
class _Replay:
    """A partition sought back to a released tenant's mark: below `upto` only the jobs of
    `tenants` are taken (every other record there was handled already)."""

    upto: int = 0
    tenants: set[str] = field(default_factory=set)
    sought: bool = False


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
        parking: Parking | None = None,
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
        self._progress = Progress()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.parking = parking if parking is not None else Parking()
        self._replays: dict[TopicPartition, _Replay] = {}
        self._seeks: dict[TopicPartition, int] = {}
        self._probes: set[asyncio.Task[None]] = set()
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
        for probe in list(self._probes):
            probe.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)
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
        registry = self._registry()
        if registry is not None:
            registry.add_listener(self._changed)
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        while True:
            self._retry_due()
            self._apply_seeks(consumer)
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
        job: MeterJob | None = None
        error = ""
        try:
            job = MeterJob(**orjson.loads(value or b""))
        except (orjson.JSONDecodeError, TypeError) as exc:
            error = str(exc)
        replay = self._replays.get(tp)
        if replay is not None and not replay.sought:
            if job is not None and job.tenant_id in replay.tenants:
                return  # fetched before the seek back: read again after it
        elif replay is not None and offset < replay.upto:
            if offset >= replay.upto - 1:  # read back up to where it was: done
                del self._replays[tp]
                self._progress.clear_floor(tp, _REPLAY)
            if job is None or job.tenant_id not in replay.tenants:
                return  # handled before the seek (finished, or still open in memory)
        self._progress.taken(tp, offset)
        if job is None:
            log.error("malformed meter job skipped", extra={"offset": offset, "error": error})
            self._count("malformed")
            self._progress.finished(tp, offset)
            return
        if job.tenant_id in self.parking:
            self._hold((tp, offset, job))
        else:
            self._enqueue((tp, offset, job))

    def _enqueue(self, entry: Entry) -> None:
        job = entry[2]
        queue = self._queues.setdefault(job.key, deque())
        queue.append(entry)
        self._queued += 1
        if job.key not in self._workers:
            worker = asyncio.create_task(self._drain(job.key), name="meter-key")
            self._workers[job.key] = worker

    def _hold(self, entry: Entry) -> None:
        """A parked tenant's job: kept in memory, or let go above a floor (re-read later)."""
        tp, offset, job = entry
        held = self.parking.hold(entry)
        if held == "marked":
            self._progress.set_floor(tp, job.tenant_id, offset)
        if held != "held":
            self._progress.finished(tp, offset)  # the floor holds the commit point below it

    async def _drain(self, key: tuple[str, str, str]) -> None:
        """Sends one key's jobs in order, one at a time; a parked tenant's go to parking."""
        queue = self._queues[key]
        try:
            while queue:
                tp, offset, job = queue[0]
                if job.tenant_id in self.parking:
                    queue.popleft()
                    self._queued -= 1
                    self._hold((tp, offset, job))
                    continue
                async with self._slots:
                    outcome = await self._send(job)
                queue.popleft()
                self._queued -= 1
                if outcome in PARK_REASONS:
                    self._park(job.tenant_id, outcome)
                    self._hold((tp, offset, job))
                    continue
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
            if registry is None or job.tenant_id in registry.unreadable():
                return "tenant_unreadable"
            # Loaded registry, no record: the tenant was deleted; its usage can never be
            # reported (no key), so this is final (counted), not parked.
            log.error("meter job of a deleted tenant dropped", extra={"tenant_id": job.tenant_id})
            return "unknown_tenant"
        return await self._client.send(tenant, job)

    # -- parking ---------------------------------------------------------------------------
    def _park(self, tenant_id: str, reason: str) -> None:
        first = tenant_id not in self.parking
        parked = self.parking.park(tenant_id, reason)
        self._count("parked")
        if first:
            log.warning(
                "tenant's meter jobs parked",
                extra={"tenant_id": tenant_id, "reason": reason},
            )
        else:
            log.info(
                "tenant's meter jobs still parked",
                extra={"tenant_id": tenant_id, "reason": reason, "attempts": parked.attempts},
            )

    def _changed(self, tenant_id: str, tenant: object) -> None:
        """Registry listener: a parked tenant's record changed, so retry it now."""
        self.parking.retry_now(tenant_id)

    def _retry_due(self) -> None:
        for parked in self.parking.due():
            parked.probing = True
            probe = asyncio.create_task(self._probe(parked.tenant_id), name="meter-probe")
            self._probes.add(probe)
            probe.add_done_callback(self._probe_done)

    def _probe_done(self, task: asyncio.Task[None]) -> None:
        self._probes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("meter parking retry failed", exc_info=task.exception())

    async def _probe(self, tenant_id: str) -> None:
        """Tries the tenant's first held job; through → the tenant is released."""
        parked = self.parking.tenants.get(tenant_id)
        if parked is None:
            return
        if parked.held:
            tp, offset, job = parked.held[0]
            async with self._slots:
                outcome = await self._send(job)
            if outcome in PARK_REASONS:
                self._park(tenant_id, outcome)
                return
            if parked.held and parked.held[0] == (tp, offset, job):
                parked.held.popleft()
                self._count(outcome)
                self._progress.finished(tp, offset)
        self._release(tenant_id)

    def _release(self, tenant_id: str) -> None:
        parked = self.parking.release(tenant_id)
        if parked is None:
            return
        log.info(
            "tenant's meter jobs released",
            extra={
                "tenant_id": tenant_id,
                "held": len(parked.held),
                "parked_s": round(self.parking.age(parked), 1),
            },
        )
        for entry in parked.held:
            tp, offset, _ = entry
            mark = parked.marks.get(tp)
            if mark is not None and offset >= mark:
                # Re-read from the mark below anyway: sending it now too would send it twice.
                self._progress.finished(tp, offset)
            else:
                self._queued_from_parking(entry)
        for tp, mark in parked.marks.items():
            self._progress.set_floor(tp, _REPLAY, mark)
            self._progress.clear_floor(tp, tenant_id)
            replay = self._replays.setdefault(tp, _Replay())
            replay.tenants.add(tenant_id)
            replay.sought = False
            self._seeks[tp] = min(self._seeks.get(tp, mark), mark)

    def _queued_from_parking(self, entry: Entry) -> None:
        if entry[2].tenant_id in self.parking:  # parked again meanwhile
            self._hold(entry)
        else:
            self._enqueue(entry)

    def _apply_seeks(self, consumer: AIOKafkaConsumer) -> None:
        if not self._seeks:
            return
        assigned = consumer.assignment()
        seeks, self._seeks = self._seeks, {}
        for tp, offset in seeks.items():
            replay = self._replays.get(tp)
            if tp not in assigned or replay is None:
                continue
            # Everything handed over so far was taken: re-read the released tenants' jobs
            # from the mark up to here, the rest as usual.
            consumer.seek(tp, offset)
            replay.upto = max(replay.upto, self._progress.next.get(tp, offset + 1))
            replay.sought = True

    def status(self) -> dict[str, Any]:
        """Parked tenants for `/readyz` and `quotaflow_meter_*` gauges (no secret, ever)."""
        tenants = sorted(self.parking.tenants.values(), key=lambda p: p.since)
        return {
            "parked_tenants": len(tenants),
            "parked_jobs_held": self.parking.held_jobs,
            "oldest_parked_seconds": round(self.parking.oldest_age(), 1),
            "parked": [
                {
                    "tenant_id": p.tenant_id,
                    "reason": p.reason,
                    "parked_seconds": round(self.parking.age(p), 1),
                    "held": len(p.held),
                    "rereads": len(p.marks),
                    "attempts": p.attempts,
                }
                for p in tenants[:MAX_LISTED]
            ],
        }

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def revoked(self, tps: set[TopicPartition]) -> None:
        self._progress.forget(tps)
        self.parking.forget(tps)
        for tp in tps:
            self._replays.pop(tp, None)
            self._seeks.pop(tp, None)


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
