"""The billing worker: a Faust app whose agents turn Stripe events and usage into quotas.

Three agents share one `customers` table (changelog topic), co-partitioned by tenant:
- billing (`streams/billing_agent.py`): Stripe events, each a signal; the current object
  is read from Stripe concurrently (per-customer lanes, `streams/lanes.py`) and events
  are applied per customer in partition order, in batches;
- usage (`streams/usage_agent.py`): edge usage batches into `used`, and meter jobs;
- grace (`streams/grace.py`): ends grace periods by time alone.
Each agent hands records to a plain-Python processor (`streams/processing/`) and carries
its `Effects` out through one `Sink`.

Faust is at-least-once: a crash replays events whose effects may already be in the
changelog. The state records what it applied, so replays change nothing; a replay of
an already-applied offset re-emits the current quota (harmless thanks to `version`),
which covers a crash between the changelog write and the quota-update send.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import faust
import mode

from quotaflow.registry import TenantRegistry
from quotaflow.settings import WorkerSettings
from quotaflow.tenants.running import RunningRegistry, open_registry
from quotaflow.topicread import tenant_partition
from streams.billing_agent import BillingPipeline, reader_fetch
from streams.faust_tuning import reseek_after_recovery, set_fetch_max_wait
from streams.grace import add_grace_timer
from streams.lanes import LaneLimits, Lanes
from streams.processing.billing import BillingProcessor
from streams.processing.effects import Effects
from streams.records import TrackedTable, raw_table, raw_topic
from streams.resume import ResumeReconciler
from streams.sink import Sink
from streams.stripe_client import StripeReader
from streams.usage_agent import add_usage_agent
from tables.billing import QuotaPolicy

log = logging.getLogger("quotaflow.worker")

PRODUCER_BATCH_BYTES = 512 * 1024
PRODUCER_REQUEST_BYTES = 1024 * 1024


class WorkerResources:
    """What the agent needs beyond Faust, opened in the worker's own loop.

    The tenant registry follows a topic with a background consumer, so it must start
    inside the loop Faust runs; the agent waits for `ready` before its first event, so no
    event is ever judged against a half-loaded registry.
    """

    def __init__(self, settings: WorkerSettings, registry: TenantRegistry | None) -> None:
        self._settings = settings
        self._given = registry
        self._opened: RunningRegistry | None = None
        self.registry: TenantRegistry | None = registry
        self.ready = asyncio.Event()
        if registry is not None:
            self.ready.set()

    async def open(self) -> None:
        if self.registry is None:
            # Records are checked on first use; the pass over all of them waits for
            # `begin_checks` (the app has recovered and serves): at start the CPU goes
            # to getting ready (BENCHMARKS.md, scale).
            self._opened = await open_registry(self._settings, defer_checks=True)
            self.registry = self._opened
        self.ready.set()

    def begin_checks(self) -> None:
        if self._opened is not None:
            self._opened.begin_checks()

    async def close(self) -> None:
        if self._opened is not None:
            await self._opened.stop()
            self._opened = None


class RegistryOpening(mode.Service):
    """Opens the worker's registry while Faust starts, instead of after it.

    Faust starts `@app.service`s only once its tables are recovered; a dependency added to
    the app starts with it, before the consumer. Its start only launches the load, so the
    load overlaps the rebalance and table recovery (the agents wait for
    `WorkerResources.ready` before their first event anyway). A load that fails crashes
    the app, as a failed start would.
    """

    def __init__(self, app: faust.App, resources: WorkerResources) -> None:
        super().__init__()
        self._app = app
        self._resources = resources
        self._task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._task = asyncio.create_task(self._resources.open(), name="open-tenants")
        self._task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        log.error("the tenant registry did not open", exc_info=error)
        asyncio.get_running_loop().create_task(self._app.crash(error))

    async def on_stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def lane_limits(settings: WorkerSettings) -> LaneLimits:
    return LaneLimits(
        max_in_flight=settings.stripe_max_in_flight,
        tenant_max_in_flight=settings.stripe_tenant_max_in_flight,
        tenant_max_queued=settings.stripe_tenant_max_queued,
        max_queued=settings.worker_max_queued,
        fallback_after=settings.stripe_fallback_after,
    )


def create_app(
    settings: WorkerSettings,
    registry: TenantRegistry | None = None,
    *,
    stripe_reader: StripeReader | None = None,
    web_port: int | None = None,
    observe: Callable[[Effects], None] | None = None,
    on_resume_reconcile: Callable[[str, int], None] | None = None,
) -> faust.App:
    """Builds the worker app. One app per process (and per test).

    Without `registry`, the app opens the one `open_registry(settings)` gives when it starts.
    `observe` is shown the `Effects` of every batch once Kafka has them (metrics);
    `on_resume_reconcile(outcome, injected)` each reconcile of a resumed tenant.
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
        Table=TrackedTable,
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
    meter_jobs = raw_topic(app, settings, topics.meter_jobs)
    notifications = raw_topic(app, settings, topics.notifications)
    customers = raw_table(app, settings, "customers")  # CustomerState JSON
    aliases = raw_table(app, settings, "aliases")  # tenant/alias -> Stripe customer id
    sink = Sink(
        customers=customers,
        aliases=aliases,
        quota_updates=quota_updates,
        deadletter=deadletter,
        meter_jobs=meter_jobs,
        notifications=notifications,
        observe=observe,
    )

    resources = WorkerResources(settings, registry)
    add_usage_agent(
        app,
        settings,
        sink=sink,
        customers=customers,
        aliases=aliases,
        registry=lambda: resources.registry,
        ready=resources.ready.wait,
        policy=policy,
    )
    add_grace_timer(
        app,
        settings,
        sink=sink,
        customers=customers,
        policy=policy,
        registry=lambda: resources.registry,
    )

    lanes = Lanes(
        reader_fetch(reader) if reader is not None else None,
        lane_limits(settings),
        pressure=lambda partition, paused: _pause(app, stripe_events, partition, paused),
    )
    pipeline = BillingPipeline(
        app,
        customers=customers,
        aliases=aliases,
        sink=sink,
        processor=BillingProcessor(policy, time.time),
        lanes=lanes,
        registry=lambda: resources.registry,
        ready=resources.ready.wait,
    )

    @app.agent(stripe_events, concurrency=1)
    async def billing(stream: faust.StreamT[bytes]) -> None:
        """Applies each Stripe event once in effect; see streams/billing_agent.py."""
        await pipeline.run(stream)

    resume = ResumeReconciler(
        settings,
        lambda: resources.registry,
        holds=lambda tenant_id: _holds_tenant(app, stripe_events, settings.partitions, tenant_id),
        on_outcome=on_resume_reconcile,
    )

    app.add_dependency(RegistryOpening(app, resources))

    @app.service
    class Resources(mode.Service):
        """Closes the registry (`RegistryOpening` opened it) and the Stripe reader when the
        app stops; reconciles resumed tenants meanwhile (streams/resume.py)."""

        _resume: asyncio.Task[None] | None = None

        async def on_start(self) -> None:
            # Faust starts this once its tables are recovered: the registry's check pass
            # may have the CPU now (the registry opened before, see RegistryOpening).
            await resources.ready.wait()
            resources.begin_checks()
            self._resume = asyncio.create_task(resume.follow(), name="resume-reconcile")

        async def on_stop(self) -> None:
            task, self._resume = self._resume, None
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await resources.close()
            if reader is not None:
                await reader.close()

    app.customers = customers  # type: ignore[attr-defined]
    app.tenants_of = lambda: resources.registry  # type: ignore[attr-defined]
    app.billing = pipeline  # type: ignore[attr-defined]
    return app


def _holds_tenant(
    app: faust.App, topic: faust.TopicT, partitions: int, tenant_id: str
) -> bool | None:
    """Whether this worker holds the tenant's `stripe.events` partition; None while it
    holds none (starting, or rebalancing): the caller asks again later."""
    try:
        assigned = app.consumer.assignment()
    except Exception:  # noqa: BLE001 - not started or stopping: not known yet
        return None
    mine = {tp.partition for tp in assigned if tp.topic in topic.topics}
    if not mine:
        return None
    return tenant_partition(tenant_id, partitions) in mine


def _pause(app: faust.App, topic: faust.TopicT, partition: int, paused: bool) -> None:
    """Pauses or resumes fetching one partition of `stripe.events` (a tenant's lane is
    full); a rebalance in progress owns the partitions' flow, so it is left alone then."""
    if app.rebalancing:
        return
    try:
        consumer = app.consumer
        assigned = consumer.assignment()
    except Exception:  # noqa: BLE001 - not started or stopping: nothing to pause
        return
    tps = [tp for tp in assigned if tp.partition == partition and tp.topic in topic.topics]
    if not tps:
        return
    if paused:
        consumer.pause_partitions(tps)
    else:
        consumer.resume_partitions(tps)
