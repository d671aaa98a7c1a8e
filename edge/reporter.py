"""The edge's usage reporter: drains the cache's counts into batches and reports them.

Every `interval` seconds: drain `QuotaCache.drain_usage()` (units per customer and
metered feature; an item names its `feature` unless it is the default one) into a sealed
batch on the disk spool (`edge/spool.py`), then send spooled batches to the ingress
`POST /v1/usage` oldest first, one at a time, each signed with the node's edge key
(`QUOTAFLOW_EDGE_SIGNING_KEYS`, kind `usage` of `wire/signing.py`). A batch id is
`<node_id>:<spool incarnation>:<seq>` (edge/spool.py); re-sending a batch re-uses its id,
so the core counts it once however often it travels, and a spool that starts over empty
is a new incarnation, never a duplicate of the old one.

While the ingress is away the node keeps counting (the cache never waits on this loop);
batches pile up on disk up to `max_batches`, after which new usage merges into the newest
unsent batch, so the backlog is bounded in files and bytes whatever the outage length.
Retries back off exponentially with jitter up to `MAX_BACKOFF`.

Answers: 200 → done. 422 naming a tenant (unknown, suspended, not served here) → that
tenant's items are dropped from the batch (counted) and the rest re-sent at once under
the same id (nothing was published). Other 4xx except 401/408/429 → the batch is
malformed: moved to `rejected/` and counted. 401 (keys being rotated, clock skew),
408, 429, 5xx and network errors → retry later, never drop.

Metrics (in the sidecar's registry): `edge_usage_backlog_batches`,
`edge_usage_backlog_units`, `edge_usage_reports_total{outcome}`,
`edge_usage_units_reported_total`, `edge_usage_units_dropped_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from edge.cache import QuotaCache, UsageKey
from edge.settings import EdgeSettings
from edge.spool import UsageSpool
from wire import REGION_HTTP_HEADER, Kind, Signer
from wire.signing import KeyMaterial

__all__ = ["REGION_HTTP_HEADER", "UsageReporter", "default_node_id"]

T = TypeVar("T")
log = logging.getLogger("quotaflow.edge.usage")

REQUEST_TIMEOUT = 5.0
MIN_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STOP_FLUSH_BUDGET = 2.0


def default_node_id(settings: EdgeSettings) -> str:
    """`<region>-<host>-<port>`: stable across restarts of one sidecar, unique per node."""
    if settings.usage_node_id:
        return settings.usage_node_id
    raw = f"{settings.region}-{socket.gethostname()}-{settings.edge_port}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", raw)[:64]


class _Retry(Exception):
    """The batch must be sent again later."""


class UsageReporter:
    """Owns the spool and the reporting task; `start()` and `stop()` mirror each other."""

    def __init__(
        self,
        cache: QuotaCache,
        *,
        ingress_url: str,
        region: str,
        node_id: str,
        keys: Sequence[KeyMaterial],
        spool_dir: Path,
        interval: float = 1.0,
        max_batches: int = 600,
        max_items: int = 5_000,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cache = cache
        self._url = ingress_url.rstrip("/") + "/v1/usage"
        self._region = region
        self.node_id = node_id
        self._signer = Signer(Kind.USAGE, keys, clock=clock) if keys else None
        self.spool = UsageSpool(spool_dir)
        self._interval = interval
        self._max_batches = max_batches
        self._max_items = max_items
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        # Spool writes fsync, which can take milliseconds: they run in a thread so the loop
        # keeps answering consumes, and this lock keeps one writer at a time. A batch is
        # marked sent under the same lock, so a merge can never change a batch being sent.
        self._spool_lock = asyncio.Lock()
        self._backoff = 0.0
        self._retry_at = 0.0
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        self.backlog_batches = Gauge(
            "edge_usage_backlog_batches", "Usage batches not yet accepted.", registry=registry
        )
        self.backlog_units = Gauge(
            "edge_usage_backlog_units", "Units in batches not yet accepted.", registry=registry
        )
        self.reports = Counter(
            "edge_usage_reports",
            "Usage report attempts by outcome (accepted, retry, rejected, tenant_dropped).",
            ["outcome"],
            registry=registry,
        )
        self.units_reported = Counter(
            "edge_usage_units_reported", "Units the ingress accepted.", registry=registry
        )
        self.units_dropped = Counter(
            "edge_usage_units_dropped",
            "Units dropped: tenant refused by the ingress, or batch rejected.",
            registry=registry,
        )

    @classmethod
    def from_settings(
        cls, settings: EdgeSettings, cache: QuotaCache, registry: CollectorRegistry | None = None
    ) -> UsageReporter:
        return cls(
            cache,
            ingress_url=settings.usage_ingress_url,
            region=settings.region,
            node_id=default_node_id(settings),
            keys=settings.edge_signing_keys,
            spool_dir=settings.usage_spool_dir / default_node_id(settings),
            interval=settings.usage_report_interval,
            max_batches=settings.usage_spool_max_batches,
            max_items=settings.usage_max_items,
            registry=registry,
        )

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self.spool.load()
        self._update_gauges()
        log.info(
            "usage spool opened",
            extra={"node_id": self.node_id, "incarnation": self.spool.incarnation},
        )
        if self.spool:
            log.info("usage spool has unsent batches", extra={"batches": len(self.spool)})
        if self._signer is None:
            log.warning("no edge signing key: reports will wait in the spool")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        self._task = asyncio.create_task(self._run(self._session), name="edge-usage-reporter")
        self._task.add_done_callback(self._done)

    async def stop(self) -> None:
        """Seals what was counted (to disk), tries one last send, then closes. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is None:
            return
        try:
            await self.seal()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_FLUSH_BUDGET):
                    await self._flush(session)
        finally:
            await session.close()

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("usage reporter died", exc_info=task.exception())

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.seal()
            if time.monotonic() >= self._retry_at:
                await self._flush(session)

    # -- sealing --------------------------------------------------------------------

    async def seal(self) -> None:
        """Moves the cache's counts since the last seal into the spool (durably)."""
        drained = self._cache.drain_usage()
        if not drained:
            return
        await self._on_disk(self._seal, drained)
        self._update_gauges()

    def _seal(self, drained: dict[UsageKey, int]) -> None:
        for chunk in _chunks(drained, self._max_items):
            if len(self.spool) >= self._max_batches:
                tail = self.spool.tail()
                fits = tail is not None and len(tail.items) + len(chunk) <= self._max_items
                if fits and self.spool.merge_into_tail(chunk) is not None:
                    continue
            self.spool.seal(chunk)

    async def _on_disk(self, write: Callable[..., T], *args: Any) -> T:
        async with self._spool_lock:
            return await asyncio.to_thread(write, *args)

    # -- sending --------------------------------------------------------------------

    async def flush(self) -> None:
        """Sends every spooled batch now (tests and shutdown); stops at the first failure."""
        if self._session is not None:
            await self._flush(self._session)

    async def _flush(self, session: aiohttp.ClientSession) -> None:
        while self.spool.head() is not None:
            try:
                await self._send(session)
            except _Retry:
                self.reports.labels(outcome="retry").inc()
                self._backoff = min(max(self._backoff * 2, MIN_BACKOFF), MAX_BACKOFF)
                self._retry_at = time.monotonic() + self._backoff * (0.5 + random.random() / 2)
                return
            finally:
                self._update_gauges()
        self._backoff = 0.0

    async def _send(self, session: aiohttp.ClientSession) -> None:
        if self._signer is None:
            raise _Retry
        async with self._spool_lock:
            batch = self.spool.head()
            if batch is None:
                return
            self.spool.mark_attempted(batch.seq)
        body = orjson.dumps(
            {
                "batch_id": self.spool.batch_id(self.node_id, batch.seq),
                "node_id": self.node_id,
                "region": self._region,
                "sent_at": self._clock(),
                "items": [_item(key, units) for key, units in batch.items.items()],
            }
        )
        headers = {
            **self._signer.headers(body),
            REGION_HTTP_HEADER: self._region,
            "Content-Type": "application/json",
        }
        try:
            async with session.post(self._url, data=body, headers=headers) as response:
                status = response.status
                answer = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("usage report failed", extra={"error": type(exc).__name__})
            raise _Retry from None
        if status == 200:
            await self._on_disk(self.spool.remove, batch.seq)
            self.reports.labels(outcome="accepted").inc()
            self.units_reported.inc(batch.units)
            return
        error = _error_of(answer)
        refused = error.get("tenant_id")
        if status == 422 and isinstance(refused, str):
            dropped = await self._on_disk(self.spool.drop_tenant, batch.seq, refused)
            self.reports.labels(outcome="tenant_dropped").inc()
            self.units_dropped.inc(dropped)
            log.warning(
                "usage of a refused tenant dropped",
                extra={
                    "tenant_id": refused,
                    "reason": error.get("reason"),
                    "units": dropped,
                },
            )
            return
        if 400 <= status < 500 and status not in (401, 408, 429):
            await self._on_disk(self.spool.reject, batch.seq)
            self.reports.labels(outcome="rejected").inc()
            self.units_dropped.inc(batch.units)
            log.error(
                "usage batch rejected; kept in the spool's rejected/",
                extra={"status": status, "reason": error.get("reason"), "seq": batch.seq},
            )
            return
        log.info(
            "usage report refused for now", extra={"status": status, "reason": error.get("reason")}
        )
        raise _Retry

    def _update_gauges(self) -> None:
        self.backlog_batches.set(len(self.spool))
        self.backlog_units.set(self.spool.units)


def _item(key: UsageKey, units: int) -> dict[str, object]:
    """A report item; `feature` only for a named metered feature (the default feature's
    items are what an ingress from before features accepts)."""
    item: dict[str, object] = {"tenant_id": key[0], "customer_id": key[1], "units": units}
    if len(key) == 3:
        item["feature"] = key[2]
    return item


def _error_of(answer: bytes) -> dict[str, object]:
    try:
        doc = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return {}
    error = doc.get("error") if isinstance(doc, dict) else None
    return error if isinstance(error, dict) else {}


def _chunks(drained: dict[UsageKey, int], size: int) -> list[dict[UsageKey, int]]:
    items = list(drained.items())
    return [dict(items[i : i + size]) for i in range(0, len(items), size)]
