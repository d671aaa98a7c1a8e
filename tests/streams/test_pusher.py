"""The regional pusher against the real broker, delivering to real edge sidecars."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from edge.auth import AppAuth, token_digest
from edge.cache import QuotaCache
from edge.server import STATE_KEY, build_app
from quotaflow.commands.localkafka import free_port
from quotaflow.registry import StaticTenantRegistry
from quotaflow.settings import Settings
from streams.push_node import PushConfig
from streams.pusher import Pusher, run_pusher
from tables.quota import QuotaUpdate, Reason
from tables.tenant import Tenant, WebhookSecret
from tests.processes import EDGE_APP, EDGE_AUTH, EDGE_TOKEN
from wire import Kind, Verifier, generate_keypair

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

KEY, PUBLIC = generate_keypair()  # the region's push key pair
FAST = PushConfig(
    request_timeout=0.5,
    probe_timeout=0.3,
    max_attempts=2,
    breaker_base=0.1,
    breaker_max=0.5,
    heartbeat=0.2,
    commit_interval=0.2,
    drain_timeout=0.5,
)


def tenant(tenant_id: str, *regions: str) -> Tenant:
    return Tenant(
        id=tenant_id,
        webhook_secrets=(WebhookSecret(id="w1", secret=SecretStr("whsec_test")),),
        regions=regions,
    )


def update(tenant_id: str, customer: str, version: int) -> QuotaUpdate:
    return QuotaUpdate(
        tenant_id=tenant_id,
        customer_id=customer,
        limit=100 * version,
        used=0,
        remaining=100 * version,
        status="active",
        version=version,
        reason=Reason(kind="policy", id=f"v{version}"),
        updated_at=time.time(),
    )


class Edge:
    """A real sidecar app on a fixed local port that can be started late and stopped.

    `refuse` (fault injection): a push whose body contains one of these byte strings is
    answered 400 once, as a node answers a batch it cannot take.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.cache = QuotaCache(regions=("eu",))
        self.refuse: set[bytes] = set()
        self.app = build_app(
            self.cache,
            Verifier(Kind.PUSH, [PUBLIC]),
            region="eu",
            auth=AppAuth({EDGE_APP: [token_digest(EDGE_TOKEN)]}),
        )
        self.app.middlewares.append(self._refusing)
        self._runner: web.AppRunner | None = None

    @web.middleware
    async def _refusing(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/v1/push" and self.refuse:
            body = await request.read()
            for marker in list(self.refuse):
                if marker in body:
                    self.refuse.discard(marker)
                    return web.json_response({"error": {"reason": "bad_body"}}, status=400)
        return await handler(request)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def ready(self) -> bool:
        return self.app[STATE_KEY].ready

    @property
    def snapshots(self) -> int:
        return self.app[STATE_KEY].snapshots_completed

    def holds(self, updates: Iterable[QuotaUpdate]) -> bool:
        return all(self.cache.version(u.tenant_id, u.customer_id) == u.version for u in updates)


class Hung:
    """Accepts TCP connections, reads, and never answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while await reader.read(65536):
            pass

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def eventually(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def edges() -> AsyncIterator[Callable[[], Edge]]:
    made: list[Edge] = []

    def make() -> Edge:
        edge = Edge(free_port())
        made.append(edge)
        return edge

    yield make
    for edge in made:
        await edge.stop()


@pytest.fixture
def push_settings(
    settings_factory: Callable[..., Settings],
) -> Callable[[list[str]], Awaitable[Settings]]:
    async def make(urls: list[str]) -> Settings:
        settings = settings_factory(
            region="eu", edge_nodes={"eu": urls}, push_signing_keys={"eu": [SecretStr(KEY)]}
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            topic = NewTopic(
                settings.topics.quota_updates,
                num_partitions=2,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"},
            )
            await admin.create_topics([topic])
        finally:
            await admin.close()
        return settings

    return make


async def produce(settings: Settings, updates: Iterable[QuotaUpdate]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for u in updates:
            partition = sum(u.tenant_id.encode()) % 2  # by tenant, as the worker does
            await producer.send_and_wait(
                settings.topics.quota_updates,
                u.to_json(),
                key=u.key.encode(),
                partition=partition,
            )
    finally:
        await producer.stop()


def lifecycle(tenant_id: str, customers: int, versions: int) -> list[QuotaUpdate]:
    return [update(tenant_id, f"c{c}", v) for v in range(1, versions + 1) for c in range(customers)]


def latest(updates: Iterable[QuotaUpdate]) -> list[QuotaUpdate]:
    last: dict[str, QuotaUpdate] = {}
    for u in updates:
        last[u.key] = u
    return list(last.values())


REGISTRY = StaticTenantRegistry([tenant("euco", "eu"), tenant("both", "eu", "us")])


async def test_every_node_converges_and_other_regions_are_not_forwarded(
    edges: Callable[[], Edge], push_settings: Callable[[list[str]], Awaitable[Any]]
) -> None:
    a, b = edges(), edges()
    await a.start()
    await b.start()
    settings = await push_settings([a.url, b.url])
    registry = StaticTenantRegistry([*REGISTRY, tenant("usco", "us")])
    before = lifecycle("euco", 5, 2) + lifecycle("usco", 5, 2)
    await produce(settings, before)
    pusher = Pusher(settings, registry, config=FAST)
    await pusher.start()
    try:
        after = lifecycle("both", 5, 3) + lifecycle("usco", 3, 4) + [update("euco", "c0", 7)]
        await produce(settings, after)
        wanted = [u for u in latest(before + after) if u.tenant_id != "usco"]
        await eventually(lambda: a.holds(wanted) and b.holds(wanted), "both edges converge")
        await eventually(lambda: a.ready and b.ready, "both edges ready")
        # Everything consumed and acknowledged: the us-only tenant was seen and skipped.
        ends = {TopicPartition(settings.topics.quota_updates, p): 0 for p in range(2)}
        for u in before + after:
            tp = TopicPartition(settings.topics.quota_updates, sum(u.tenant_id.encode()) % 2)
            ends[tp] += 1
        await eventually(lambda: pusher.safe_offsets() == ends, "pusher consumed all")
        assert all(a.cache.version("usco", f"c{c}") is None for c in range(5))
        assert all(b.cache.version("usco", f"c{c}") is None for c in range(5))
    finally:
        await pusher.stop()


async def test_a_node_down_at_start_gets_a_snapshot_when_it_comes_up(
    edges: Callable[[], Edge], push_settings: Callable[[list[str]], Awaitable[Any]]
) -> None:
    up, late = edges(), edges()
    await up.start()
    settings = await push_settings([up.url, late.url])
    first = lifecycle("euco", 10, 2)
    await produce(settings, first)
    stop = asyncio.Event()
    task = asyncio.create_task(run_pusher(settings, REGISTRY, stop, config=FAST))
    try:
        await eventually(lambda: up.holds(latest(first)), "the live node converges")
        assert not late.holds(latest(first))
        await late.start()
        await eventually(lambda: late.ready, "the late node got its snapshot")
        await eventually(lambda: late.holds(latest(first)), "the late node converges")
        more = lifecycle("both", 3, 2)
        await produce(settings, more)
        wanted = latest(first + more)
        await eventually(lambda: up.holds(wanted) and late.holds(wanted), "deltas reach both")
    finally:
        stop.set()
        await task


async def test_a_hung_node_does_not_block_the_healthy_one(
    edges: Callable[[], Edge], push_settings: Callable[[list[str]], Awaitable[Any]]
) -> None:
    healthy, hung = edges(), Hung()
    await healthy.start()
    await hung.start()
    try:
        settings = await push_settings([hung.url, healthy.url])
        stop = asyncio.Event()
        task = asyncio.create_task(run_pusher(settings, REGISTRY, stop, config=FAST))
        try:
            updates = lifecycle("euco", 20, 3)
            await produce(settings, updates)
            await eventually(lambda: healthy.holds(latest(updates)), "healthy node converges")
            assert hung.connections >= 1  # it was tried, and is still hanging
        finally:
            stop.set()
            await task
    finally:
        await hung.stop()


async def test_a_tenant_joining_the_region_is_caught_up(
    edges: Callable[[], Edge], push_settings: Callable[[list[str]], Awaitable[Any]]
) -> None:
    edge = edges()
    await edge.start()
    settings = await push_settings([edge.url])
    registry = StaticTenantRegistry([tenant("mover", "us"), tenant("euco", "eu")])
    moved = lifecycle("mover", 4, 2)
    await produce(settings, [*moved, update("euco", "c0", 1)])
    stop = asyncio.Event()
    task = asyncio.create_task(run_pusher(settings, registry, stop, config=FAST))
    try:
        await eventually(lambda: edge.holds([update("euco", "c0", 1)]), "edge converges")
        assert edge.cache.version("mover", "c0") is None
        registry.put(tenant("mover", "us", "eu"))
        await eventually(lambda: edge.holds(latest(moved)), "the moved tenant's quotas arrive")
    finally:
        stop.set()
        await task


async def test_edge_http_answers_what_the_pusher_delivered(
    edges: Callable[[], Edge], push_settings: Callable[[list[str]], Awaitable[Any]]
) -> None:
    edge = edges()
    await edge.start()
    settings = await push_settings([edge.url])
    await produce(settings, [update("euco", "c9", 3)])
    stop = asyncio.Event()
    task = asyncio.create_task(run_pusher(settings, REGISTRY, stop, config=FAST))
    try:
        await eventually(lambda: edge.holds([update("euco", "c9", 3)]), "edge converges")
        async with ClientSession(headers=EDGE_AUTH) as http:
            async with http.get(f"{edge.url}/v1/quotas/euco/c9") as resp:
                doc = await resp.json()
            async with http.get(f"{edge.url}/readyz") as ready:
                assert ready.status == 200
        assert (doc["limit"], doc["remaining"], doc["version"]) == (300, 300, 3)
    finally:
        stop.set()
        await task


async def pusher_sample(settings: Settings, name: str, **labels: str) -> float:
    """A sample of the running pusher's `/metrics` (its own registry), 0 if absent."""
    async with (
        ClientSession() as http,
        http.get(f"http://127.0.0.1:{settings.pusher_port}/metrics") as resp,
    ):
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def test_a_node_restarted_in_place_is_rejoined_with_a_snapshot(
    edges: Callable[[], Edge], push_settings: Callable[[list[str]], Awaitable[Any]]
) -> None:
    first = edges()
    await first.start()
    base = await push_settings([first.url])
    settings = base.model_copy(update={"pusher_port": free_port()})  # its /metrics is read
    customers = lifecycle("euco", 20, 2)
    await produce(settings, customers)
    stop = asyncio.Event()
    task = asyncio.create_task(run_pusher(settings, REGISTRY, stop, config=FAST))
    try:
        await eventually(lambda: first.holds(latest(customers)), "the node converges")
        # The process dies and a new one takes the port at once: it answers the pusher's
        # heartbeats with 200 but holds nothing. Nothing changes upstream.
        await first.stop()
        second = Edge(first.port)
        await second.start()
        try:
            await eventually(lambda: second.holds(latest(customers)), "the new process is full")
            assert second.ready
            label = f"127.0.0.1:{first.port}"  # a configured node: host:port, not its URL
            assert (
                await pusher_sample(
                    settings, "quotaflow_push_snapshots_total", region="eu", node=label
                )
                >= 2
            )
        finally:
            await second.stop()
    finally:
        stop.set()
        await task


async def test_a_batch_refused_for_good_makes_the_node_rejoin_on_its_next_success(
    edges: Callable[[], Edge], push_settings: Callable[[list[str]], Awaitable[Any]]
) -> None:
    edge = edges()
    await edge.start()
    base = await push_settings([edge.url])
    settings = base.model_copy(update={"pusher_port": free_port()})  # its /metrics is read
    await produce(settings, [update("euco", "c0", 1)])
    stop = asyncio.Event()
    task = asyncio.create_task(run_pusher(settings, REGISTRY, stop, config=FAST))
    try:
        await eventually(lambda: edge.ready and edge.holds([update("euco", "c0", 1)]), "joined")
        assert edge.snapshots == 1
        edge.refuse.add(b'"customer_id":"refused"')
        await produce(settings, [update("euco", "refused", 1)])
        await eventually(lambda: not edge.refuse, "the batch was refused once")
        # The refused update is not lost to the node: the next success re-joins it.
        await eventually(lambda: edge.holds([update("euco", "refused", 1)]), "caught up")
        assert edge.snapshots == 2
        label = f"127.0.0.1:{edge.port}"
        assert (
            await pusher_sample(
                settings, "quotaflow_push_rejoins_total", region="eu", node=label, reason="refused"
            )
            == 1
        )
        assert (
            await pusher_sample(
                settings, "quotaflow_push_batches_total", region="eu", node=label, outcome="dropped"
            )
            == 1
        )
    finally:
        stop.set()
        await task
