"""Delivery to one edge node: its own bounded queue, sender task, keep-alive session,
retries with exponential backoff and jitter, and a circuit breaker.

Node life cycle (one sender task per node, so a slow, dead or hung node only ever
delays itself):

    join ──▶ snapshot ──▶ live (deltas, heartbeats) ──failure──▶ open ──probe ok──▶ join
      ▲                         │ queue overflow / resync requested             │
      └─────────────────────────┴───────────────────────────────────────────────┘

- join: the node starts accepting deltas, then receives a full snapshot (final batch
  marked), then the queued deltas. Per-key versions make the overlap harmless.
- A batch that fails `max_attempts` times opens the breaker: the queue and the node's
  outstanding offsets are dropped (it will be caught up by a snapshot), and a
  `GET /healthz` probe is retried with growing, jittered delays.
- A full queue (a node slower than the stream) triggers a fresh join rather than
  blocking the consumer.
- Every answer of the node carries its boot id and whether it holds a complete
  snapshot. A boot id other than the one that took the last snapshot (the node
  restarted: its memory is gone although it answers 200), or `"snapshot": false`, makes
  the sender re-join at once. So does the first success after a batch the node refused
  for good (a non-retryable 4xx: the batch is lost to that node, a snapshot restores it).
- `wake()` (the node announced a new boot id) cuts the breaker's wait short and, if the
  node is live, re-joins it.
- Tenant states (`active`, `suspended`, `removed`): a snapshot's first batch carries the
  region's complete list (`"tenants_complete": true`), so a node that (re)joins knows who
  is suspended and drops tenants it holds that left; a change the pusher sees later is
  queued by `offer_tenants()` and rides on the next push, sent at once when the sender is
  idle (its heartbeat wait is cut short). A change stays queued until a push carrying it
  is answered 200; a node that fails meanwhile re-joins, and the list comes with it.
  While the pusher cannot vouch for the list (a tenant record it cannot read: `tenants()`
  answers None), a snapshot carries no list, so a node removes nothing it holds.

Metric labels name the node by a bounded label (its announced node id, or `host:port`
of a configured URL: never the URL, which could carry userinfo), and a sender removes
its series when it stops, so node churn does not grow the pusher's metrics.

Offsets: `low_watermark(tp)` is the first offset handed to this node and not yet
acknowledged. The pusher commits, per partition, the minimum of these over all nodes
(and its own position); a node that is not accepting holds nothing back, because it
is caught up by snapshot when it rejoins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import orjson
from prometheus_client import Counter, Gauge

from streams.push_metrics import BATCH_OUTCOMES, REJOIN_REASONS, PushMetrics
from wire import SIGNATURE_HEADER, Signer

log = logging.getLogger(__name__)

# 4xx answers that retrying cannot fix: the batch is dropped and logged, not retried
# forever (401, 408 and 429 stay retryable: key rotation, timeouts and throttling pass).
_RETRYABLE_4XX = frozenset({401, 408, 429})


@dataclass(frozen=True)
class PushConfig:
    """Delivery tuning; defaults suit one region of a few nodes."""

    batch_max: int = 500
    snapshot_batch: int = 1000
    queue_max: int = 100_000
    request_timeout: float = 2.0
    probe_timeout: float = 1.0
    max_attempts: int = 4
    backoff_base: float = 0.05
    backoff_max: float = 1.0
    breaker_base: float = 0.5
    breaker_max: float = 10.0
    heartbeat: float = 1.0
    snapshot_timeout: float = 60.0
    commit_interval: float = 0.5
    drain_timeout: float = 2.0


class NodeDown(Exception):
    """A node failed a batch `max_attempts` times (or its snapshot could not be read)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def node_label(url: str) -> str:
    """A configured node's metric label: `host:port` of its URL, never userinfo or path."""
    parts = urlsplit(url)
    host = parts.hostname or "unknown"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"[:80]


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    """What a node says about itself in every push answer (None: an older node)."""

    boot_id: str | None
    snapshot: bool | None

    @classmethod
    def parse(cls, body: bytes) -> NodeAnswer:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return cls(None, None)
        if not isinstance(doc, dict):
            return cls(None, None)
        boot, snap = doc.get("boot_id"), doc.get("snapshot")
        return cls(
            boot if isinstance(boot, str) and 0 < len(boot) <= 64 else None,
            snap if isinstance(snap, bool) else None,
        )


def _jittered(base: float, attempt: int, cap: float) -> float:
    """Full-range jitter in [delay/2, delay] so retrying senders spread out."""
    delay = min(cap, base * (2.0**attempt))
    return delay / 2 + random.random() * delay / 2


class NodeSender:
    """Pushes one node's deltas and snapshots; see the module docstring for the states."""

    def __init__(
        self,
        url: str,
        *,
        region: str,
        signer: Signer,
        snapshot: Callable[[], Awaitable[list[bytes]]],
        config: PushConfig,
        node: str | None = None,
        tenants: Callable[[], Mapping[str, str] | None] | None = None,
        metrics: PushMetrics | None = None,
    ) -> None:
        """`node` is the metric label (the announced node id); default `node_label(url)`.
        `tenants()` is the region's complete tenant list (id -> state) a snapshot carries,
        or None while it is not known to be complete. `metrics`: the pusher's (a sender
        of its own gets a registry of its own)."""
        self._metrics = metrics or PushMetrics()
        self.url = url.rstrip("/")
        self.node = node or node_label(self.url)
        self.region = region
        self.state = "idle"
        self.accepting = False
        self._signer = signer
        self._snapshot = snapshot
        self._config = config
        self._region_json = orjson.dumps(region)
        self._queue: asyncio.Queue[tuple[Hashable, int, bytes]] = asyncio.Queue()
        self._outstanding: dict[Hashable, deque[int]] = {}
        self._resync = False
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._labels = {"region": region, "node": self.node}
        self._boot_id: str | None = None  # the process that took the last snapshot
        self._refused = False  # a batch was refused for good: re-join on the next success
        self._wake = asyncio.Event()
        self._idle_wait: asyncio.Timeout | None = None  # the heartbeat wait, while idle
        self._tenant_list = tenants
        self._tenants: dict[str, str] = {}  # tenant state changes not yet delivered

    # -- called by the pusher (same event loop, never awaits) -----------------------

    def offer(self, tp: Hashable, offset: int, value: bytes) -> None:
        """Queues one delta if the node is accepting; never blocks the consumer."""
        if not self.accepting:
            return
        if self._queue.qsize() >= self._config.queue_max:
            log.warning("push queue full, node will resync", extra=self._labels)
            self.request_resync()
            return
        self._queue.put_nowait((tp, offset, value))
        self._outstanding.setdefault(tp, deque()).append(offset)

    def low_watermark(self, tp: Hashable) -> int | None:
        pending = self._outstanding.get(tp)
        return pending[0] if pending else None

    def request_resync(self) -> None:
        """Asks for a fresh join (snapshot); the sender acts on it between batches, or at
        once when it is idle (its heartbeat wait is cut short)."""
        self.accepting = False
        self._resync = True
        self._cut_idle_wait()

    def offer_tenants(self, changes: Mapping[str, str]) -> None:
        """Queues tenant state changes for the node's next push, sent at once when idle.
        A node not accepting gets the complete list with the snapshot it joins with."""
        if not self.accepting or not changes:
            return
        self._tenants.update(changes)
        self._cut_idle_wait()

    def _cut_idle_wait(self) -> None:
        waiting = self._idle_wait
        if waiting is not None and not waiting.expired():
            waiting.reschedule(asyncio.get_running_loop().time())

    def wake(self, boot_id: str) -> None:
        """The node announced boot id `boot_id`: stop waiting for it, and re-join it if
        live and its last snapshot went to another process."""
        if boot_id == self._boot_id:
            return  # that process already took its snapshot (its answers told us first)
        self._wake.set()
        if self.state == "live" and not self._resync:
            self._metrics.rejoins.labels(**self._labels, reason="announced").inc()
            self.request_resync()

    @property
    def resync_requested(self) -> bool:
        return self._resync

    @property
    def boot_id(self) -> str | None:
        """The boot id of the node process that took this sender's last snapshot."""
        return self._boot_id

    @property
    def idle(self) -> bool:
        return not any(self._outstanding.values())

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2, keepalive_timeout=30.0),
            timeout=aiohttp.ClientTimeout(total=self._config.request_timeout),
        )
        self._task = asyncio.create_task(self._run(), name=f"push-node {self.node}")
        self._task.add_done_callback(self._died)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self._leave()
        self._forget_series()

    def _forget_series(self) -> None:
        """Removes this node's series: a departed node's label must not linger forever."""
        region, node, m = self.region, self.node, self._metrics
        removals: list[tuple[Counter | Gauge, tuple[str, ...]]] = [
            (m.node_up, (region, node)),
            (m.snapshots, (region, node)),
            *((m.batches, (region, node, outcome)) for outcome in BATCH_OUTCOMES),
            *((m.rejoins, (region, node, reason)) for reason in REJOIN_REASONS),
        ]
        for metric, labels in removals:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)

    def _died(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("push sender died", exc_info=task.exception(), extra=self._labels)

    # -- the sender task ------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            if failures:
                await self._pause(
                    _jittered(self._config.breaker_base, failures - 1, self._config.breaker_max)
                )
                if not await self._probe():
                    failures += 1
                    continue
            self._join()
            try:
                await self._send_snapshot()
                failures = 0
                self.state = "live"
                self._metrics.node_up.labels(**self._labels).set(1)
                await self._deliver()
            except NodeDown as exc:
                failures += 1
                self._metrics.batches.labels(**self._labels, outcome="down").inc()
                log.warning("edge node down", extra={**self._labels, "reason": exc.reason})
            self._leave()

    async def _pause(self, delay: float) -> None:
        """The breaker's wait, cut short by `wake()`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        self._wake.clear()

    def _join(self) -> None:
        self._drop_queue()
        self._tenants.clear()  # the snapshot's first batch carries the complete list
        self._resync = False
        self._refused = False
        self.accepting = True
        self.state = "snapshot"

    def _leave(self) -> None:
        self.accepting = False
        self.state = "open"
        self._drop_queue()
        self._metrics.node_up.labels(**self._labels).set(0)

    def _drop_queue(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        self._outstanding.clear()

    async def _probe(self) -> bool:
        assert self._session is not None
        try:
            async with asyncio.timeout(self._config.probe_timeout):
                async with self._session.get(f"{self.url}/healthz") as resp:
                    await resp.read()
                    return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _send_snapshot(self) -> None:
        try:
            values = await self._snapshot()
        except (OSError, TimeoutError) as exc:
            raise NodeDown(f"snapshot_read:{type(exc).__name__}") from exc
        except Exception as exc:  # aiokafka's errors share no base we can name narrowly
            log.exception("snapshot read failed", extra=self._labels)
            raise NodeDown("snapshot_read") from exc
        step = self._config.snapshot_batch
        chunks = [values[i : i + step] for i in range(0, len(values), step)] or [[]]
        for _ in range(3):
            if await self._post_snapshot(chunks):
                break
            # The node restarted while it received the snapshot: the chunks before went to
            # a process that is gone. Start over (the node is accepting deltas meanwhile).
            log.info("edge node restarted during its snapshot, resending", extra=self._labels)
        else:
            raise NodeDown("restarting")
        self._metrics.snapshots.labels(**self._labels).inc()
        log.info("snapshot delivered", extra={**self._labels, "keys": len(values)})

    async def _post_snapshot(self, chunks: list[list[bytes]]) -> bool:
        """Sends every chunk; False if the node's boot id changed on the way."""
        snapshot_id = uuid.uuid4().hex
        boot: str | None = None
        for i, chunk in enumerate(chunks):
            final = i == len(chunks) - 1
            flag = b"true" if final else b"false"
            mark = b'{"id":"%s","final":%s}' % (snapshot_id.encode(), flag)
            answer = await self._post(chunk, mark, complete=i == 0)
            if answer is None:
                # Refused for good: the node would be left without a complete snapshot.
                raise NodeDown("snapshot_refused")
            if i and answer.boot_id != boot:
                return False
            boot = answer.boot_id
        self._boot_id = boot
        return True

    def _rejoin_reason(self, answer: NodeAnswer | None) -> str | None:
        """Why a live node's answer asks for a fresh snapshot, if it does."""
        if answer is None:
            self._refused = True  # the batch is lost to this node: a snapshot restores it
            return None
        if self._refused:
            return "refused"
        if answer.boot_id is not None and answer.boot_id != self._boot_id:
            return "new_boot"
        if answer.snapshot is False:
            return "no_snapshot"
        return None

    def _check_answer(self, answer: NodeAnswer | None) -> bool:
        """True (and a re-join requested) when the answer shows the node needs a snapshot."""
        reason = self._rejoin_reason(answer)
        if reason is None:
            return False
        if self._resync:
            return True  # asked for already (announced, or a tenant joined the region)
        self._metrics.rejoins.labels(**self._labels, reason=reason).inc()
        log.info("edge node re-joins with a snapshot", extra={**self._labels, "reason": reason})
        self.request_resync()
        return True

    async def _deliver(self) -> None:
        """Sends queued deltas in batches (or a heartbeat when idle) until a resync."""
        queue, cfg = self._queue, self._config
        while not self._resync:
            if self._tenants and queue.empty():
                # Tenant changes queued while a batch was in flight: send them now, not
                # after a heartbeat interval (a suspension must land within 2 s).
                if self._check_answer(await self._post([], b"null")):
                    return
                continue
            try:
                async with asyncio.timeout(cfg.heartbeat) as self._idle_wait:
                    first = await queue.get()
            except TimeoutError:
                # A heartbeat, or tenant state changes that cut the wait short.
                if self._resync or self._check_answer(await self._post([], b"null")):
                    return
                continue
            finally:
                self._idle_wait = None
            batch = [first]
            while len(batch) < cfg.batch_max and not queue.empty():
                batch.append(queue.get_nowait())
            answer = await self._post([value for _, _, value in batch], b"null")
            if self._check_answer(answer) or self.resync_requested:
                return  # outstanding is dropped on leave; nothing to acknowledge
            for tp, offset, _ in batch:
                pending = self._outstanding.get(tp)
                if pending and pending[0] == offset:
                    pending.popleft()

    def _body(
        self, values: list[bytes], snapshot: bytes, tenants: Mapping[str, str], complete: bool
    ) -> bytes:
        # A fresh push id per attempt: identical retries must not look like replays.
        states = b""
        if complete:
            states = b'"tenants":%s,"tenants_complete":true,' % orjson.dumps(tenants)
        elif tenants:
            states = b'"tenants":%s,' % orjson.dumps(tenants)
        return (
            b'{"region":%s,"push_id":"%s","snapshot":%s,%s"updates":['
            % (self._region_json, uuid.uuid4().hex.encode(), snapshot, states)
            + b",".join(values)
            + b"]}"
        )

    def _tenants_delivered(self, sent: Mapping[str, str], complete: bool) -> None:
        """Forgets queued changes the node now has (a newer one queued meanwhile stays)."""
        for tenant_id, state in list(self._tenants.items()):
            if sent.get(tenant_id, "removed" if complete else None) == state:
                del self._tenants[tenant_id]

    async def _post(
        self, values: list[bytes], snapshot: bytes, *, complete: bool = False
    ) -> NodeAnswer | None:
        """One batch, retried with backoff; raises `NodeDown` when attempts run out.

        `complete`: carry the region's complete tenant list (a snapshot's first batch);
        else the tenant state changes queued so far. Returns the node's answer, or None
        when the node refused the batch for good.
        """
        assert self._session is not None
        cfg = self._config
        reason = "unknown"
        for attempt in range(cfg.max_attempts):
            if attempt:
                self._metrics.batches.labels(**self._labels, outcome="retry").inc()
                await asyncio.sleep(_jittered(cfg.backoff_base, attempt - 1, cfg.backoff_max))
            listed = None
            if complete and self._tenant_list is not None:
                # Read per attempt: the registry is live, so the list is never older
                # than a change queued while this batch was being retried.
                listed = self._tenant_list()
            whole = listed is not None
            if listed is not None:
                tenants = dict(listed)
            elif complete:
                tenants = {}  # no list we can vouch for: the node keeps what it has
            else:
                tenants = dict(self._tenants)
            body = self._body(values, snapshot, tenants, whole)
            headers = {
                SIGNATURE_HEADER: self._signer.header(body),
                "Content-Type": "application/json",
            }
            started = time.perf_counter()
            try:
                async with asyncio.timeout(cfg.request_timeout):
                    async with self._session.post(
                        f"{self.url}/v1/push", data=body, headers=headers
                    ) as resp:
                        status = resp.status
                        answer = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__
                continue
            if status == 200:
                self._metrics.latency.labels(region=self.region).observe(
                    time.perf_counter() - started
                )
                self._metrics.batches.labels(**self._labels, outcome="ok").inc()
                self._tenants_delivered(tenants, whole)
                return NodeAnswer.parse(answer)
            reason = f"http_{status}"
            if 400 <= status < 500 and status not in _RETRYABLE_4XX:
                self._metrics.batches.labels(**self._labels, outcome="dropped").inc()
                # The node re-joins on its next success, with the complete tenant list.
                self._tenants.clear()
                log.error(
                    "push batch refused, dropped; the node re-joins on its next success",
                    extra={**self._labels, "status": status},
                )
                return None
        raise NodeDown(reason)
