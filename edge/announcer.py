"""The edge node announces itself so its region's pushers find it without configuration.

On start, then every `interval` seconds (a heartbeat), the sidecar POSTs a signed
`NodeAnnouncement` (`tables/edge_node.py`) to the ingress `POST /v1/edge/nodes`; on a
graceful stop it sends one with `leaving: true`. The ingress relays it into the
compacted `edge.nodes` topic, which every pusher of the region reads.

Why through the ingress and a topic rather than straight to a pusher: the edge already
reaches the ingress (usage reports) and must never hold a Kafka client; a region may run
several pushers (one consumer group), and each must know every node, which a topic gives
them all, including a pusher that restarts (it re-reads the compacted topic).

Why signed: only a holder of one of the region's edge keys (`QUOTAFLOW_EDGE_SIGNING_KEYS`,
kind `node-announcement`) can make a pusher send the region's quotas somewhere; that key
cannot sign a push. The ingress checks it (window and replay, as for pushes) and the
pusher checks it again on the bytes it reads back.

Each announcement carries the process's boot id: a pusher that reads a new one for a
node it knows (the node restarted, and lost its memory) re-joins it with a snapshot at
once, without waiting for its breaker's next probe.

Serving never depends on this: every request has a timeout, a failure is counted and
logged once per outage (not per heartbeat), and the next heartbeat simply tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter

from edge.reporter import REGION_HTTP_HEADER, default_node_id
from edge.settings import EdgeSettings
from tables.edge_node import NodeAnnouncement
from wire import Kind, Signer
from wire.signing import KeyMaterial

__all__ = ["NodeAnnouncer"]

log = logging.getLogger("quotaflow.edge.announce")

REQUEST_TIMEOUT = 2.0
LEAVE_BUDGET = 3.0
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


class NodeAnnouncer:
    """Owns the heartbeat task; `start()` and `stop()` mirror each other."""

    def __init__(
        self,
        *,
        ingress_url: str,
        region: str,
        node_id: str,
        url: str,
        keys: Sequence[KeyMaterial],
        interval: float = 5.0,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        boot_id: str | None = None,
    ) -> None:
        self._target = ingress_url.rstrip("/") + "/v1/edge/nodes"
        self._region = region
        self.node_id = node_id
        self.url = url.rstrip("/")
        self._signer = Signer(Kind.ANNOUNCEMENT, keys, clock=clock)
        self._interval = interval
        self._clock = clock
        self.boot_id = boot_id
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.announcements = Counter(
            "edge_announcements",
            "Announcements sent to the ingress by outcome (accepted, failed) and kind.",
            ["kind", "outcome"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    @classmethod
    def from_settings(
        cls,
        settings: EdgeSettings,
        registry: CollectorRegistry | None = None,
        *,
        boot_id: str | None = None,
    ) -> NodeAnnouncer | None:
        """None when the node has no address a pusher could use (wildcard listen address
        and no `QUOTAFLOW_EDGE_URL`): announcing `0.0.0.0` would only make pushers fail."""
        url = settings.edge_url
        if url is None:
            if settings.edge_host in WILDCARD_HOSTS:
                log.warning(
                    "listening on a wildcard address without QUOTAFLOW_EDGE_URL: not announced"
                )
                return None
            url = f"http://{settings.edge_host}:{settings.edge_port}"
        return cls(
            ingress_url=settings.usage_ingress_url,
            region=settings.region,
            node_id=default_node_id(settings),
            url=url,
            keys=settings.edge_signing_keys,
            interval=settings.edge_announce_interval,
            registry=registry,
            boot_id=boot_id,
        )

    async def start(self) -> None:
        if self._task is not None:
            return
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        self._task = asyncio.create_task(self._run(), name="edge announcer")
        self._task.add_done_callback(self._died)

    async def stop(self) -> None:
        """Stops the heartbeat and announces the departure (bounded). Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        session, self._session = self._session, None
        if session is None:
            return
        try:
            if task is not None:
                async with asyncio.timeout(LEAVE_BUDGET):
                    for _ in range(2):
                        if await self._announce(session, leaving=True):
                            break
        except TimeoutError:
            log.warning("departure not announced in time", extra={"node_id": self.node_id})
        finally:
            await session.close()

    def _died(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("edge announcer died", exc_info=task.exception())

    async def _run(self) -> None:
        session = self._session
        assert session is not None
        while True:
            await self._announce(session, leaving=False)
            await asyncio.sleep(self._interval)

    async def _announce(self, session: aiohttp.ClientSession, *, leaving: bool) -> bool:
        doc = NodeAnnouncement(
            region=self._region,
            node_id=self.node_id,
            url=self.url,
            at=self._clock(),
            leaving=leaving,
            boot_id=self.boot_id,
        )
        body = orjson.dumps(doc.model_dump())
        headers = {
            **self._signer.headers(body),
            REGION_HTTP_HEADER: self._region,
            "Content-Type": "application/json",
        }
        kind = "leave" if leaving else "heartbeat"
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                async with session.post(self._target, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._failed(kind, type(exc).__name__)
        if status != 200:
            return self._failed(kind, f"http_{status}")
        self.announcements.labels(kind=kind, outcome="accepted").inc()
        if self._failing:
            log.info("announcements accepted again", extra={"node_id": self.node_id})
        self._failing = False
        return True

    def _failed(self, kind: str, reason: str) -> bool:
        self.announcements.labels(kind=kind, outcome="failed").inc()
        if not self._failing or kind == "leave":
            log.warning(
                "announcement failed, will retry",
                extra={"node_id": self.node_id, "kind": kind, "reason": reason},
            )
        self._failing = True
        return False
