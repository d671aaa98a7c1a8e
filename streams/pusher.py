"""The regional pusher (`quotaflow push --region R`): carries `quota.updates` to every
edge node of one region, signed, within milliseconds.

One consumer group per region (`{app_id}-push-{region}`), aiokafka directly with a
5 ms fetch wait. Each record's key is `tenant_id/customer_id`; only tenants whose
`regions` include R (looked up in the registry per record, so a region change takes
effect without a restart) are handed to every node's `NodeSender` (see
`streams.push_node`), which never blocks this loop.

Commit rule (owned here, one place): per partition, commit the smallest of
- this pusher's position (next offset to read), and
- each node's first handed-over but unacknowledged offset.
A node whose breaker is open, or that is re-joining, holds nothing back: whatever it
missed is in the compacted topic and reaches it in the snapshot it receives first when
it joins (end offsets are read after it starts accepting deltas). A crash therefore
redelivers at most what no live node acknowledged; duplicates are harmless because the
edge applies only newer versions.

The region watcher follows the tenants of the region and their states (`active`,
`suspended`; `removed` once a tenant is deleted or leaves the region). It runs at once
when the registry reports a change (the `tenants` topic registry calls its listeners),
and once a second regardless (a registry without listeners). Every change is queued to
every node (`NodeSender.offer_tenants`) and goes out on the next push, at once when the
node is idle, so an edge denies a suspended or removed tenant's customers within about
the registry's own delay plus a push (RELIABILITY.md: 20c). A snapshot's first batch
carries the complete list, so a node that (re)joins knows too. A tenant newly added to
the region has quotas the nodes never saw: every node is asked to re-join, i.e. to take
a fresh snapshot. Quotas of a suspended tenant are still delivered (the edges deny
them), so resuming serves current quotas at once.

Nodes = the configured ones (`QUOTAFLOW_EDGE_NODES[R]`) plus those announced in
`edge.nodes` (`streams.node_directory`) and heard from within three announcement
intervals. The node watcher (twice a second) starts a `NodeSender` for a new node (which
joins with a full snapshot, as any node does) and stops the sender of a node that
departed or fell silent, unless it is configured. An announcement with a new boot id
(the node restarted) wakes that node's sender at once, so it re-joins with a snapshot
instead of waiting out its breaker. `quotaflow_push_nodes{region}` counts
them; `quotaflow_consumer_lag{group,topic,partition}` (the worker's convention) is the
high-water mark minus this pusher's committed offset on its `quota.updates` partitions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterable

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quotaflow.health import ops_server
from quotaflow.registry import TenantRegistry, refused_family
from quotaflow.settings import PusherSettings
from streams.node_directory import NodeDirectory
from streams.offset_commit import commit_moved
from streams.push_metrics import PushMetrics
from streams.push_node import NodeSender, PushConfig, node_label
from streams.push_snapshot import read_snapshot
from wire import Kind, Signer

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
COMMIT_TIMEOUT = 5.0
REGION_WATCH_INTERVAL = 1.0
# Registry changes come in bursts (a key rotation rewrites every tenant): one scan per burst.
REGION_WATCH_MIN_GAP = 0.05
NODE_WATCH_INTERVAL = 0.5


class _LagCollector(Collector):
    """`quotaflow_consumer_lag` of the pusher, while it runs."""

    def __init__(self, pusher: Pusher) -> None:
        self._pusher = pusher

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "quotaflow_consumer_lag",
            "Records behind: high-water mark minus committed offset",
            labels=["group", "topic", "partition"],
        )
        pusher = self._pusher
        if pusher.live:
            for topic, partition, lag in pusher.lag():
                family.add_metric([pusher.group, topic, str(partition)], lag)
        yield family


class _UnreadableCollector(Collector):
    """`quotaflow_tenant_records_unreadable`: records the pusher cannot read, while it runs."""

    def __init__(self, pusher: Pusher) -> None:
        self._pusher = pusher

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "quotaflow_tenant_records_unreadable",
            "Tenant records this process cannot read (its keyring lacks their key)",
        )
        pusher = self._pusher
        family.add_metric([], len(pusher.registry.unreadable()) if pusher.live else 0)
        yield family
        yield refused_family([pusher.registry] if pusher.live else [])


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pusher: Pusher) -> None:
        self._pusher = pusher

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._pusher.commit(only=set(revoked))
        for tp in revoked:
            self._pusher.positions.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._pusher.learn_committed(assigned)


class Pusher:
    """Consumes a region's quota updates and fans them out to the region's edge nodes."""

    def __init__(
        self,
        settings: PusherSettings,
        registry: TenantRegistry,
        *,
        config: PushConfig | None = None,
    ) -> None:
        self.settings = settings
        self.region = settings.region
        self.registry = registry
        self.config = config or PushConfig()
        self.positions: dict[Hashable, int] = {}
        self.nodes: list[NodeSender] = []
        self.group = f"{settings.app_id}-push-{self.region}"
        # This pusher's series, served on its /metrics (never the global default registry).
        self.live = False  # between start() and stop(): what the collectors report
        self.metrics = PushMetrics()
        self.metrics.registry.register(_LagCollector(self))
        self.metrics.registry.register(_UnreadableCollector(self))
        self.directory = NodeDirectory(
            settings, on_restart=self._node_restarted, metrics=self.metrics
        )
        self._configured = [u.rstrip("/") for u in settings.edge_nodes.get(self.region, [])]
        self._signer: Signer | None = None
        self._committed: dict[Hashable, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._states: dict[str, str] | None = None  # the region's tenants, as last sent
        self._registry_changed = asyncio.Event()
        add_listener = getattr(registry, "add_listener", None)
        if callable(add_listener):  # the topic registry: wake the watcher on each change
            add_listener(lambda _tenant_id, _tenant: self._registry_changed.set())

    # -- routing ----------------------------------------------------------------------

    def serves(self, tenant_id: str) -> bool:
        tenant = self.registry.summary(tenant_id)  # no document built per record
        return tenant is not None and self.region in tenant.regions

    def _serves_key(self, key: bytes) -> bool:
        return self.serves(key.split(b"/", 1)[0].decode("utf-8", "replace"))

    def _dispatch(self, tp: Hashable, record: ConsumerRecord) -> None:
        key, value = record.key, record.value
        if key is None or value is None:
            # Tombstones (`tenants purge`, after a delete): the edge dropped the tenant's
            # entries when its removal was pushed; there is no per-customer delete.
            return
        if not self._serves_key(key):
            return
        try:
            if not isinstance(orjson.loads(value), dict):
                raise ValueError("not an object")
        except ValueError:
            log.error("quota update is not a JSON object, skipped", extra={"offset": record.offset})
            return
        for node in self.nodes:
            node.offer(tp, record.offset, value)

    # -- lifecycle ----------------------------------------------------------------------

    def _push_signer(self) -> Signer:
        """The region's newest private push key; `ValueError` (naming no key) if it has none
        or it is malformed, so a misconfigured pusher fails at start, not at its first node."""
        if self._signer is None:
            self._signer = Signer(Kind.PUSH, self.settings.push_signing_keys.get(self.region, []))
        return self._signer

    def _sender(self, url: str, node: str) -> NodeSender:
        return NodeSender(
            url,
            region=self.region,
            signer=self._push_signer(),
            snapshot=self._snapshot,
            config=self.config,
            node=node,
            tenants=self.tenant_list,
            metrics=self.metrics,
        )

    def _node_restarted(self, url: str, boot_id: str) -> None:
        """The directory read a new boot id for the node at `url`: re-join it now."""
        for node in self.nodes:
            if node.url == url:
                node.wake(boot_id)

    async def start(self) -> None:
        signer = self._push_signer()
        log.info("signing pushes", extra={"region": self.region, "key_id": signer.key_id})
        if not self._configured:
            log.info(
                "no edge nodes configured, waiting for announcements", extra={"region": self.region}
            )
        self.nodes = [self._sender(url, node_label(url)) for url in dict.fromkeys(self._configured)]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.group,
            client_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=5,
        )
        consumer.subscribe([self.settings.topics.quota_updates], listener=_Rebalance(self))
        self._consumer = consumer
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await consumer.start()
            for node in self.nodes:
                await node.start()
        except BaseException:
            await self.stop()
            raise
        self._states = self.tenant_states()
        self.live = True
        self.metrics.nodes.labels(region=self.region).set(len(self.nodes))
        for name, coro in (
            ("consume", self._consume()),
            ("commit", self._commit_loop()),
            ("region-watch", self._watch_region()),
            ("nodes", self.directory.follow()),
            ("node-watch", self._watch_nodes()),
        ):
            task = asyncio.create_task(coro, name=f"pusher {self.region} {name}")
            task.add_done_callback(self._task_done)
            self._tasks.append(task)
        log.info("pusher started", extra={"region": self.region, "nodes": len(self.nodes)})

    async def stop(self) -> None:
        """Stops consuming, gives live nodes a moment to drain, commits, closes. Idempotent."""
        tasks, self._tasks = self._tasks, []
        if tasks:
            tasks[0].cancel()  # consume first: nothing new is handed out
            await asyncio.gather(tasks[0], return_exceptions=True)
            for _ in range(max(1, int(self.config.drain_timeout / 0.02))):
                if all(node.idle for node in self.nodes):
                    break
                await asyncio.sleep(0.02)
            for task in tasks[1:]:
                task.cancel()
            await asyncio.gather(*tasks[1:], return_exceptions=True)
            await self.commit()
        self.live = False
        for node in self.nodes:
            await node.stop()
        await self.directory.stop()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def ready(self) -> bool:
        """Consuming, with every background task alive, and every tenant record readable."""
        return (
            self._consumer is not None
            and bool(self._tasks)
            and not any(t.done() for t in self._tasks)
            and not self.registry.unreadable()
            and self.registry.checked
        )

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "pusher task died", exc_info=task.exception(), extra={"task": task.get_name()}
            )

    async def wait_failed(self) -> BaseException:
        """Returns the error of the first background task that dies (never, normally)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                return task.exception() or RuntimeError("unreachable")
        return RuntimeError(f"pusher task ended: {[t.get_name() for t in done]}")

    # -- background tasks ---------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            for tp, records in batches.items():
                for record in records:
                    self._dispatch(tp, record)
                if records:
                    self.positions[tp] = records[-1].offset + 1

    async def _snapshot(self) -> list[bytes]:
        return await read_snapshot(
            self.settings, self._serves_key, time_limit=self.config.snapshot_timeout
        )

    def safe_offsets(self) -> dict[Hashable, int]:
        """Per partition, the offset below which every live node has acknowledged."""
        safe: dict[Hashable, int] = {}
        for tp, position in self.positions.items():
            low = position
            for node in self.nodes:
                mark = node.low_watermark(tp)
                if mark is not None and mark < low:
                    low = mark
            safe[tp] = low
        return safe

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        await commit_moved(
            consumer,
            self.safe_offsets(),
            self._committed,
            only=only,
            timeout=COMMIT_TIMEOUT,
            log=log,
        )

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.commit_interval)
            await self.commit()

    async def learn_committed(self, assigned: Iterable[TopicPartition]) -> None:
        """Seeds the committed offsets of newly assigned partitions (for the lag gauge)."""
        consumer = self._consumer
        if consumer is None:
            return
        for tp in assigned:
            try:
                async with asyncio.timeout(COMMIT_TIMEOUT):
                    offset = await consumer.committed(tp)
            except (KafkaError, TimeoutError):
                continue
            self._committed[tp] = offset if offset is not None else 0

    def lag(self) -> list[tuple[str, int, int]]:
        """(topic, partition, high-water mark minus committed offset) per assigned partition."""
        consumer = self._consumer
        if consumer is None:
            return []
        rows = []
        for tp in sorted(consumer.assignment()):
            high = consumer.highwater(tp)
            committed = self._committed.get(tp)
            if high is None or committed is None:
                continue
            rows.append((tp.topic, tp.partition, max(int(high) - int(committed), 0)))
        return rows

    async def _watch_nodes(self) -> None:
        while True:
            await self.sync_nodes()
            await asyncio.sleep(NODE_WATCH_INTERVAL)

    async def sync_nodes(self) -> None:
        """Starts senders for newly announced nodes, stops those departed or silent."""
        # url -> metric label: a configured node by host:port, an announced one by its id.
        wanted = {url: node_label(url) for url in self._configured}
        for node_id, url in sorted(self.directory.live().items()):
            wanted.setdefault(url, node_id)
        have = {node.url: node for node in self.nodes}
        gone = [node for url, node in have.items() if url not in wanted]
        added = [self._sender(url, label) for url, label in wanted.items() if url not in have]
        if not gone and not added:
            return
        # Rebind, never mutate: `_dispatch` iterates the list between awaits.
        self.nodes = [node for node in self.nodes if node.url in wanted] + added
        self.metrics.nodes.labels(region=self.region).set(len(self.nodes))
        for node in added:
            log.info("edge node joined", extra={"region": self.region, "node": node.node})
            await node.start()
        for node in gone:
            log.info(
                "edge node left, delivery stopped", extra={"region": self.region, "node": node.node}
            )
            await node.stop()

    def readiness(self) -> dict[str, object]:
        """Why not ready, for `/readyz` (a count, never a key or a record)."""
        unreadable = len(self.registry.unreadable())
        if unreadable:
            return {"reason": "tenant_records_unreadable", "unreadable_records": unreadable}
        if not self.registry.checked:
            return {"reason": "tenant_records_unchecked"}
        return {}

    def tenant_list(self) -> dict[str, str] | None:
        """The complete list a snapshot carries; None while a tenant record cannot be read
        here, or is not checked yet: a list without that tenant would make every node
        remove it."""
        if self.registry.unreadable() or not self.registry.checked:
            return None
        return self.tenant_states()

    def tenant_states(self) -> dict[str, str]:
        """Every tenant served in this region, by state (`active` or `suspended`)."""
        return {t.id: t.status for t in self.registry.summaries() if self.region in t.regions}

    async def _watch_region(self) -> None:
        while True:
            try:
                async with asyncio.timeout(REGION_WATCH_INTERVAL):
                    await self._registry_changed.wait()
            except TimeoutError:
                pass
            self._registry_changed.clear()
            self.sync_region()
            await asyncio.sleep(REGION_WATCH_MIN_GAP)

    def sync_region(self) -> None:
        """Sends the nodes what changed in the region's tenants since the last call (none
        until every record is checked: a tenant checked later has not joined)."""
        if not self.registry.checked:
            return
        current = self.tenant_states()
        before = self._states if self._states is not None else current
        self._states = current
        changes = {t: state for t, state in current.items() if before.get(t) != state}
        changes.update({t: "removed" for t in before.keys() - current.keys()})
        if not changes:
            return
        for state in changes.values():
            self.metrics.tenant_changes.labels(region=self.region, state=state).inc()
        log.info(
            "tenant states changed, sent to the nodes",
            extra={"region": self.region, "tenants": len(changes)},
        )
        for node in self.nodes:
            node.offer_tenants(changes)
        if current.keys() - before.keys():
            log.info("tenants joined region, nodes resync", extra={"region": self.region})
            for node in self.nodes:
                node.request_resync()


async def run_pusher(
    settings: PusherSettings,
    registry: TenantRegistry,
    stop: asyncio.Event,
    *,
    config: PushConfig | None = None,
) -> None:
    """Runs the pusher for `settings.region` until `stop` is set.

    `/healthz`, `/readyz` (ready once consuming) and `/metrics` are served on
    QUOTAFLOW_PUSHER_HOST:QUOTAFLOW_PUSHER_PORT meanwhile.
    """
    pusher = Pusher(settings, registry, config=config)
    async with ops_server(
        settings.pusher_host,
        settings.pusher_port,
        pusher.ready,
        pusher.metrics.registry,
        detail=pusher.readiness,
    ):
        await _run(pusher, stop)


async def _run(pusher: Pusher, stop: asyncio.Event) -> None:
    await pusher.start()
    try:
        stopping = asyncio.create_task(stop.wait())
        failing = asyncio.create_task(pusher.wait_failed())
        try:
            done, _ = await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, failing):
                task.cancel()
            await asyncio.gather(stopping, failing, return_exceptions=True)
        if failing in done:
            raise failing.result()
    finally:
        await pusher.stop()
