"""Reads a bounded slice of a topic, partition by partition, without joining any group.

Every operator command reads this way, and so does the worker's reconcile of a resumed
tenant (`streams/reconcile.py`), which is why this sits in the foundation and not with the
commands: it assigns partitions itself (no consumer group, no
commits, nothing a running worker could notice), fixes the end of each partition when it
starts (records produced meanwhile, such as a replay's own output, are not read), and
reports progress in offsets so a progress bar can show an ETA.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from quotaflow.exceptions import OpsError
from quotaflow.settings import KafkaGroup

# How long a read may see no progress before it gives up (the broker is away).
STALL_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Position:
    """Where a read starts or stops: an offset, a wall-clock time, or an end of the log
    (`quotaflow.commands.ops.timespec` reads one from what an operator types)."""

    offset: int | None = None
    at: float | None = None  # Unix seconds
    edge: str | None = None  # "beginning" | "end"


def tenant_partition(tenant_id: str, partitions: int) -> int:
    """The partition a tenant's records are in: Kafka's default partitioner on the key."""
    hashed: int = murmur2(tenant_id.encode())
    return (hashed & 0x7FFFFFFF) % partitions


class Tracker(Protocol):
    """Progress of a long read (quotaflow.commands.ops.progress.Progress is one)."""

    def add_total(self, length: int) -> None: ...

    def advance(self, n: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Span:
    """Offsets [start, end) of one partition."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(self.end - self.start, 0)


class TopicReader:
    """One topic, read by assignment. Use as `async with TopicReader(settings, topic)`."""

    def __init__(self, settings: KafkaGroup, topic: str, *, timeout: float = STALL_TIMEOUT) -> None:
        self.settings = settings
        self.topic = topic
        self._timeout = timeout
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=int(timeout * 1000),
        )

    async def __aenter__(self) -> TopicReader:
        async with asyncio.timeout(self._timeout):
            await self._consumer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._consumer.stop()

    async def partitions(self) -> list[int]:
        """The topic's partitions; `OpsError` if the topic does not exist."""
        async with asyncio.timeout(self._timeout):
            # aiokafka has no public refresh of the cluster metadata that
            # partitions_for_topic reads; a group-less consumer's covers every topic.
            await self._consumer._client.force_metadata_update()
        found = sorted(self._consumer.partitions_for_topic(self.topic) or ())
        if not found:
            raise OpsError(f"topic {self.topic!r} does not exist (run `quotaflow topics`)")
        return found

    async def spans(
        self, partitions: Sequence[int], start: Position, stop: Position | None = None
    ) -> list[Span]:
        """Offset ranges for `start` to `stop` (None: the end now). An offset `stop` is
        inclusive; a time `stop` ends before the first record at or after that time."""
        tps = [TopicPartition(self.topic, p) for p in partitions]
        async with asyncio.timeout(self._timeout):
            begins = await self._consumer.beginning_offsets(tps)
            ends = await self._consumer.end_offsets(tps)
            firsts = await self._resolve(tps, start, begins, ends)
            lasts = ends if stop is None else await self._resolve(tps, stop, begins, ends, True)
        return [
            Span(tp.partition, firsts[tp], max(firsts[tp], min(lasts[tp], ends[tp]))) for tp in tps
        ]

    async def _resolve(
        self,
        tps: list[TopicPartition],
        position: Position,
        begins: dict[TopicPartition, int],
        ends: dict[TopicPartition, int],
        inclusive: bool = False,
    ) -> dict[TopicPartition, int]:
        if position.edge == "beginning":
            return dict(begins)
        if position.edge == "end":
            return dict(ends)
        if position.offset is not None:
            wanted = position.offset + (1 if inclusive else 0)
            return {tp: min(max(wanted, begins[tp]), ends[tp]) for tp in tps}
        assert position.at is not None
        found = await self._consumer.offsets_for_times({tp: int(position.at * 1000) for tp in tps})
        return {tp: ends[tp] if found[tp] is None else found[tp].offset for tp in tps}

    async def records(
        self, spans: Sequence[Span], progress: Tracker | None = None
    ) -> AsyncIterator[Any]:
        """The records of `spans` in offset order per partition. Progress counts offsets,
        so gaps (compaction, transaction markers) count too."""
        todo = {TopicPartition(self.topic, s.partition): s for s in spans if s.size > 0}
        if progress is not None:
            progress.add_total(sum(s.size for s in todo.values()))
        if not todo:
            return
        consumer = self._consumer
        consumer.assign(list(todo))
        done_at = {tp: s.start for tp, s in todo.items()}
        for tp, span in todo.items():
            consumer.seek(tp, span.start)
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=500)
            now = loop.time()
            if not batch and now - last_progress > self._timeout:
                raise OpsError(f"no progress reading {self.topic} for {self._timeout:.0f}s")
            for tp, messages in batch.items():
                if tp not in todo:
                    continue
                span = todo[tp]
                for message in messages:
                    if message.offset >= span.end:
                        break
                    yield message
                last_progress = now
                position = min(await consumer.position(tp), span.end)
                if progress is not None:
                    progress.advance(position - done_at[tp])
                done_at[tp] = position
                if position >= span.end:
                    del todo[tp]
                    consumer.pause(tp)
        consumer.unsubscribe()


def header(headers: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    """The last value of header `name`, or None."""
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found
