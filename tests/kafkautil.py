"""Small real-broker helpers for tests: produce with headers, read a topic to its end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from quotaflow.testing.harness import eventually


async def produce(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value, headers in records:
            await asyncio.wait_for(
                producer.send_and_wait(topic, value, key=key, headers=headers), 10
            )
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, timeout: float = 10.0) -> list[Any]:
    """Every record now in `topic`, from the beginning to the high-water marks."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ] or [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[Any] = []
        async with asyncio.timeout(timeout):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    out.extend(messages)
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # no public metadata refresh
    return consumer.partitions_for_topic(topic) or set()


async def wait_for_records(
    bootstrap: str, topic: str, count: int, timeout: float = 60.0
) -> list[Any]:
    """Waits until `topic` holds at least `count` records; returns every record in it then
    (up to its end offsets at that moment), or fails with how many it saw.

    One consumer follows the topic from its beginning: each poll reads only what arrived
    since the last one, instead of re-reading the whole topic every time.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            await consumer.start()
            partitions = await eventually(
                lambda: _partitions(consumer, topic), timeout=timeout, what=f"{topic} exists"
            )
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while len(records) < count:
                for messages in (await consumer.getmany(timeout_ms=300)).values():
                    records.extend(messages)
            # What else is in the topic now belongs to the answer, as a full read's would.
            ends = await consumer.end_offsets(tps)
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                    records.extend(m for m in messages if m.offset < ends[tp])
    except TimeoutError:
        raise AssertionError(f"{topic} holds {len(records)} records, expected {count}") from None
    finally:
        await consumer.stop()
    return records
