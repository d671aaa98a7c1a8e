"""The whole pipeline as real processes (`quotaflow ingress|worker|push|edge`), with the
ports, keys and files a scenario needs to break it and to look inside it afterwards.

The worker fetches each event's subscription from Stripe, as in production: from the
Stripe stand-in, which holds every customer's final subscription before any event is sent
(deliveries arrive late, duplicated and out of order, after every change happened at
Stripe; the last state is what Stripe answers). `stripe=None`: snapshot mode (fetch off).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.testing.harness import RegionKeys, edge_nodes_env, free_port, pipeline_env
from quotaflow.testing.stripe_standin import StandinControl
from quotaflow.topics import ensure_topics
from tests.pipeline import StripeFeed
from tests.processes import EDGE_AUTH, Component, edge_auth_env, start
from tests.reliability.model import Expected, Workload

Key = tuple[str, str]


@dataclass
class Stack:
    """Ports, env and handles of one pipeline; components go into `started`."""

    settings: Settings
    workload: Workload
    tmp: Path
    started: list[Component]
    nodes: dict[str, int]  # region -> edge nodes in it
    stripe: StandinControl | None  # what the worker fetches from; None: the fetch is off
    ingress_port: int = field(default_factory=free_port)
    edge_ports: dict[str, list[int]] = field(default_factory=dict)
    push_keys: dict[str, str] = field(default_factory=dict)  # region -> private push key
    edge_keys: dict[str, str] = field(default_factory=dict)  # region -> private edge key
    extra_nodes: dict[str, list[str]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Component] = field(default_factory=dict)
    # One ingress process unless a scenario asks for more: the edge routes' replay caches
    # are per process (README, `quotaflow ingress --workers`), and scenario 5 replays.
    ingress_workers: int = 1

    def __post_init__(self) -> None:
        fresh = RegionKeys.fresh(list(self.nodes))
        self.push_keys.update(fresh.push)
        self.edge_keys.update(fresh.edge)
        # The same dicts: a scenario that adds a region's key changes every later env.
        self.keys = RegionKeys(push=self.push_keys, edge=self.edge_keys)
        for region, count in self.nodes.items():
            self.edge_ports[region] = [free_port() for _ in range(count)]
        tenants_file = self.tmp / "tenants.json"
        tenants_file.write_bytes(dump_tenants(self.workload.tenants))
        self.tenants_file = tenants_file
        self.feed = StripeFeed(self.stripe, self.workload.tenants)
        for (tenant_id, _), (final, _) in sorted(self.workload.finals.items()):
            self.feed.change(tenant_id, final)

    @property
    def env(self) -> dict[str, str]:
        s = self.settings
        nodes = {
            r: [f"http://127.0.0.1:{p}" for p in ports] + self.extra_nodes.get(r, [])
            for r, ports in self.edge_ports.items()
        }
        return {
            **pipeline_env(
                bootstrap=s.kafka_bootstrap,
                tenants_file=self.tenants_file,
                data_dir=self.tmp / "worker",
                stripe_api=None if self.stripe is None else self.stripe.url,
                topic_prefix=s.topic_prefix,
                partitions=s.partitions,
                app_id=s.app_id,
            ),
            **edge_nodes_env(nodes),
            # Public keys only: each signer gets its private key when it starts.
            **self.keys.public_env(),
            # The digest of the tests' application token (consume and quota reads need it).
            **edge_auth_env(),
            "QUOTAFLOW_LOG_LEVEL": "INFO",
            # Static membership, as the chart deploys the worker (QUOTAFLOW_WORKER_ID = the
            # pod name): a worker restarted after a SIGKILL takes its partitions back at
            # once. Without it the group waits out the killed member's session (Faust's
            # 60 s) before a rebalance, and the restarted worker published nothing for
            # 60-90 s (seen in test_notifications.py under load).
            "QUOTAFLOW_WORKER_ID": "worker-0",
            **self.extra_env,
        }

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    def edge_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for ports in self.edge_ports.values() for p in ports]

    # -- processes ---------------------------------------------------------------------

    def start_ingress(self) -> Component:
        args = ["ingress", "--port", str(self.ingress_port), "--workers", str(self.ingress_workers)]
        proc = start(self.started, args, self.env, self.tmp)
        proc.wait_port(self.ingress_port)
        self.procs["ingress"] = proc
        return proc

    def start_worker(self, web_port: int | None = None) -> Component:
        args = ["worker"] if web_port is None else ["worker", "--web-port", str(web_port)]
        self.procs["worker"] = start(self.started, args, self.env, self.tmp)
        return self.procs["worker"]

    def start_pusher(self, region: str) -> Component:
        env = {**self.env, **self.keys.pusher_env(region)}
        proc = start(self.started, ["push", "--region", region], env, self.tmp)
        self.procs[f"push-{region}"] = proc
        return proc

    def start_edge(self, region: str, index: int) -> Component:
        port = self.edge_ports[region][index]
        env = {**self.env, **self.keys.edge_env(region)}
        proc = start(self.started, ["edge", "--region", region, "--port", str(port)], env, self.tmp)
        proc.wait_port(port)
        self.procs[f"edge-{region}-{index}"] = proc
        return proc

    async def start_all(self, worker_web_port: int | None = None) -> None:
        await ensure_topics(self.settings)
        for region, ports in self.edge_ports.items():
            for i in range(len(ports)):
                self.start_edge(region, i)
        self.start_worker(worker_web_port)
        for region in self.edge_ports:
            self.start_pusher(region)
        self.start_ingress()

    def logs(self) -> list[Path]:
        return sorted(self.tmp.glob("*.log"))

    # -- looking inside ------------------------------------------------------------------

    def keys_in(self, region: str) -> list[Key]:
        served = {t.id for t in self.workload.tenants if region in t.regions}
        return [k for k in self.workload.keys if k[0] in served]

    async def edge_view(self, port: int, keys: Iterable[Key]) -> dict[Key, dict[str, Any] | None]:
        out: dict[Key, dict[str, Any] | None] = {}
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout, headers=EDGE_AUTH) as session:
            for tenant, customer in keys:
                url = f"http://127.0.0.1:{port}/v1/quotas/{tenant}/{customer}"
                try:
                    async with session.get(url) as resp:
                        body = await resp.read()
                        out[(tenant, customer)] = orjson.loads(body) if resp.status == 200 else None
                except (aiohttp.ClientError, TimeoutError):
                    out[(tenant, customer)] = None
        return out

    async def mismatches(self, region: str, port: int) -> dict[Key, object]:
        """Keys whose quota at this edge is not the reference's (or absent)."""
        keys = self.keys_in(region)
        view = await self.edge_view(port, keys)
        wrong: dict[Key, object] = {}
        for key in keys:
            doc = view[key]
            want = self.workload.expected[key]
            got = None if doc is None else Expected.of_edge(doc)
            if got != want:
                wrong[key] = (got, want)
        return wrong

    async def converge(self, within: float = 90.0) -> dict[str, dict[Key, int]]:
        """Waits until every edge holds exactly the reference; returns versions per edge."""
        deadline = time.monotonic() + within
        wrong: dict[str, dict[Key, object]] = {}
        while time.monotonic() < deadline:
            wrong = {}
            for region, ports in self.edge_ports.items():
                for port in ports:
                    bad = await self.mismatches(region, port)
                    if bad:
                        wrong[f"{region}:{port}"] = bad
            if not wrong:
                break
            await asyncio.sleep(1.0)
        else:
            sample = {edge: list(bad.items())[:3] for edge, bad in wrong.items()}
            raise AssertionError(f"edges did not converge within {within}s: {sample}")
        versions: dict[str, dict[Key, int]] = {}
        for region, ports in self.edge_ports.items():
            for port in ports:
                view = await self.edge_view(port, self.keys_in(region))
                versions[f"{region}:{port}"] = {
                    k: int(doc["version"]) for k, doc in view.items() if doc is not None
                }
        return versions


async def topic_records(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record in `topic` up to its end offsets now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    out: list[Any] = []
    async with asyncio.timeout(timeout):
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()  # no public metadata refresh
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            if not tps:
                return out
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=300, max_records=5000)
                for tp, records in batch.items():
                    out.extend(r for r in records if r.offset < ends[tp])
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()
    return out


def event_ids(records: Iterable[Any]) -> set[tuple[str, str]]:
    """(tenant, event id) of `stripe.events` records, from their envelope headers."""
    out: set[tuple[str, str]] = set()
    for record in records:
        headers: Mapping[str, bytes] = dict(record.headers)
        out.add((headers["qf-tenant"].decode(), headers["qf-event-id"].decode()))
    return out


async def group_lag(bootstrap: str, group: str, topics: Iterable[str]) -> int:
    """Records in `topics` the consumer group has not committed yet (-1: nothing committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    async with asyncio.timeout(20):
        await admin.start()
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(group)
            await consumer._client.force_metadata_update()
            tps = [
                TopicPartition(t, p)
                for t in topics
                for p in sorted(consumer.partitions_for_topic(t) or set())
            ]
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
            await admin.close()
    if not committed:
        return -1
    return sum(max(0, ends[tp] - (committed[tp].offset if tp in committed else 0)) for tp in tps)
