"""Reading a whole topic once, from its beginning to the end offsets seen at the start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

__all__ = ["partitions_of", "scan_topic"]


async def partitions_of(bootstrap: str, topic: str, timeout: float = 10.0) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    async with asyncio.timeout(timeout):
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
    return sorted(p["partition"] for p in described["partitions"])


async def scan_topic(
    bootstrap: str, topic: str, *, committed_only: bool = True, timeout: float = 60.0
) -> AsyncIterator[tuple[int, ConsumerRecord]]:
    """Every record of `topic` as (partition, record), up to the end offsets at the start."""
    tps = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
        fetch_max_wait_ms=100,
    )
    async with asyncio.timeout(timeout):
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending:
                batches = await consumer.getmany(*pending, timeout_ms=200)
                for tp, messages in batches.items():
                    for message in messages:
                        yield tp.partition, message
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()
