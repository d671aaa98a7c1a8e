"""Consumer lag from the broker's committed offsets and end offsets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from quotaflow.commands.ops.lag import consumer_lag
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from tests.kafkautil import produce

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


async def test_lag_is_end_minus_committed_per_group_and_partition(
    settings_factory: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    settings = settings_factory(partitions=1)
    await ensure_topics(settings)
    topic = settings.topics.stripe_events
    await produce(settings.kafka_bootstrap, topic, [(b"acme", b"{}", [])] * 5)
    group = unique("lag-group")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        async with asyncio.timeout(30):
            await consumer.commit({tp: OffsetAndMetadata(2, "")})
    finally:
        await consumer.stop()

    rows = await consumer_lag(settings, group=group)
    assert [(r.group, r.topic, r.partition, r.committed, r.end, r.lag) for r in rows] == [
        (group, topic, 0, 2, 5, 3)
    ]
    assert rows[0].to_dict()["lag"] == 3
