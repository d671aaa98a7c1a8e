"""Consumer lag: for each consumer group, committed offset vs end offset per partition.

Reads group offsets with the admin client (`list_consumer_groups`,
`list_consumer_group_offsets`) and end offsets with a group-less consumer. By default
only groups that committed offsets on this deployment's topics (the topic prefix) are
shown; a partition a group never committed on shows no row (nothing to compare).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from quotaflow.settings import KafkaGroup


@dataclass(frozen=True, slots=True)
class Lag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(self.end - self.committed, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
        }


def _group_id(entry: Any) -> str:
    raw = entry[0] if isinstance(entry, tuple) else entry
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def consumer_lag(
    settings: KafkaGroup, *, group: str | None = None, timeout: float = 30.0
) -> list[Lag]:
    """Lag rows, sorted by group, topic, partition. `group`: a substring filter."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=int(timeout * 1000)
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(timeout * 1000),
    )
    async with asyncio.timeout(timeout):
        await admin.start()
    try:
        async with asyncio.timeout(timeout):
            await consumer.start()
            groups = sorted({_group_id(g) for g in await admin.list_consumer_groups()})
            if group is not None:
                groups = [g for g in groups if group in g]
            committed: dict[tuple[str, TopicPartition], int] = {}
            for gid in groups:
                offsets = await admin.list_consumer_group_offsets(gid)
                for tp, meta in offsets.items():
                    if meta.offset >= 0 and tp.topic.startswith(settings.topic_prefix):
                        committed[(gid, tp)] = meta.offset
            tps = sorted({tp for _, tp in committed})
            ends = await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
        await admin.close()
    rows = [Lag(g, tp.topic, tp.partition, off, ends[tp]) for (g, tp), off in committed.items()]
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))
