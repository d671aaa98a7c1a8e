"""Which edge nodes of a region have announced themselves: a follower of `edge.nodes`.

Reads the compacted topic from the beginning with a throwaway consumer (no group: every
pusher sees every record) and keeps, per node of its region, the newest announcement
whose signature verifies with the region's public edge keys (`QUOTAFLOW_EDGE_VERIFY_KEYS`,
kind `node-announcement`; the ingress checked it too; this check makes a record written by
anything else harmless). Only the signature is checked here (`Verifier.verify_record`):
the record is re-read after restarts, so freshness comes from the signed `at` instead.
A tombstone is a departure. An announcement whose boot id differs from the one held for
that node means the node restarted: `on_restart(url, boot_id)` tells the pusher at once.

Two checks keep a stolen key from steering a pusher: the announced URL's host must be
inside the region's allow-list (`QUOTAFLOW_EDGE_URL_ALLOW`: host names or CIDRs) and carry
no userinfo, and an announcement whose signed `at` is beyond now + `push_tolerance` is
ignored, so a far-future `at` cannot keep a silent node alive.

Counted in `quotaflow_pusher_announcements_total{region, outcome}` with outcomes
`announced`, `departed`, `forged` (unsigned or bad signature: ignored), `malformed`,
`outside_allow_list`, `future_at`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from quotaflow.settings import PusherSettings
from streams.push_metrics import PushMetrics
from tables.edge_node import SIGNATURE_RECORD_HEADER, NodeAnnouncement
from wire import Kind, SignatureError, Verifier

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
RETRY_DELAY = 2.0


@dataclass(frozen=True, slots=True)
class KnownNode:
    node_id: str
    url: str
    at: float
    boot_id: str | None = None


def verified(verifier: Verifier, header: bytes | None, value: bytes) -> bool:
    """The record's signature header verifies `value` as an announcement (any age)."""
    if header is None:
        return False
    try:
        verifier.verify_record(header.decode("ascii", "replace"), value)
    except SignatureError:
        return False
    return True


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class UrlAllowList:
    """Host names (exact, case-insensitive) and networks an announced URL may name."""

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def of(cls, entries: Iterable[str]) -> UrlAllowList:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            entry = entry.strip()
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if entry:
                    hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            return False
        if host is None or parts.username is not None or parts.password is not None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host.lower().rstrip(".") in self.hosts
        return any(address in network for network in self.networks)


class NodeDirectory:
    """The region's announced nodes; the owner runs `follow()` as a tracked task, cancels
    it, then calls `stop()`."""

    def __init__(
        self,
        settings: PusherSettings,
        *,
        clock: Callable[[], float] = time.time,
        on_restart: Callable[[str, str], None] | None = None,
        metrics: PushMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._announcements = (metrics or PushMetrics()).announcements
        self._on_restart = on_restart
        self.region = settings.region
        self._prefix = f"{self.region}/".encode()
        self._verifier = Verifier(Kind.ANNOUNCEMENT, settings.edge_verify_keys.get(self.region, []))
        self._ttl = 3 * settings.edge_announce_interval
        self._skew = settings.push_tolerance
        self._allow = UrlAllowList.of(settings.edge_url_allow.get(self.region, []))
        self._clock = clock
        self._nodes: dict[bytes, KnownNode] = {}
        self._consumer: AIOKafkaConsumer | None = None

    def live(self) -> dict[str, str]:
        """node_id → url of nodes heard from within three announcement intervals."""
        oldest = self._clock() - self._ttl
        return {n.node_id: n.url for n in self._nodes.values() if n.at >= oldest}

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            self._settings.topics.edge_nodes,
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            client_id=f"{self._settings.app_id}-push-{self.region}-nodes",
        )

    async def follow(self) -> None:
        """Connects, then applies every record as it arrives, forever.

        Connecting waits for the topic; until it exists (or while the broker is away at
        start) only configured nodes are served, so this retries instead of failing the
        pusher.
        """
        while self._consumer is None:
            consumer = self._new_consumer()
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    await consumer.start()
            except (KafkaError, TimeoutError) as exc:
                await consumer.stop()
                log.warning(
                    "edge.nodes not readable yet, retrying",
                    extra={"region": self.region, "error": type(exc).__name__},
                )
                await asyncio.sleep(RETRY_DELAY)
                continue
            except BaseException:
                await consumer.stop()  # cancelled while connecting
                raise
            self._consumer = consumer
        while True:
            batches = await self._consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batches.values():
                for record in records:
                    self.apply(record)

    async def stop(self) -> None:
        """Closes the consumer; cancel `follow()` first. Idempotent."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def apply(self, record: ConsumerRecord) -> None:
        key: bytes | None = record.key
        if key is None or not key.startswith(self._prefix):
            return  # another region's node
        value: bytes | None = record.value
        if value is None:
            if self._nodes.pop(key, None) is not None:
                self._announcements.labels(region=self.region, outcome="departed").inc()
                log.info("edge node departed", extra={"region": self.region, "key": key.decode()})
            return
        header = dict(record.headers or ()).get(SIGNATURE_RECORD_HEADER)
        if not verified(self._verifier, header, value):
            self._announcements.labels(region=self.region, outcome="forged").inc()
            log.warning(
                "unsigned or forged node announcement ignored", extra={"region": self.region}
            )
            return
        try:
            doc = NodeAnnouncement.model_validate(orjson.loads(value))
        except (orjson.JSONDecodeError, ValidationError):
            self._announcements.labels(region=self.region, outcome="malformed").inc()
            return
        if doc.key.encode() != key or doc.leaving:
            self._announcements.labels(region=self.region, outcome="malformed").inc()
            return
        if not self._allow.allows(doc.url):
            self._announcements.labels(region=self.region, outcome="outside_allow_list").inc()
            log.warning(
                "announced node URL outside the region's allow-list, ignored",
                extra={"region": self.region, "node": doc.node_id},
            )
            return
        if doc.at > self._clock() + self._skew:
            # A far-future `at` would keep the node "heard from" long after it fell silent;
            # the ingress refuses such announcements, so this one came another way.
            self._announcements.labels(region=self.region, outcome="future_at").inc()
            return
        previous = self._nodes.get(key)
        if previous is not None and previous.at > doc.at:
            return
        node = KnownNode(doc.node_id, doc.url.rstrip("/"), doc.at, doc.boot_id)
        self._nodes[key] = node
        self._announcements.labels(region=self.region, outcome="announced").inc()
        if node.boot_id is None or previous is None or previous.boot_id == node.boot_id:
            return
        log.info("edge node restarted", extra={"region": self.region, "node": node.node_id})
        if self._on_restart is not None:
            self._on_restart(node.url, node.boot_id)
