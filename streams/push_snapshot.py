"""The snapshot a node gets when it (re)joins: the latest value of every key in the
compacted `quota.updates` topic, read from the beginning up to the end offsets taken at
the start of the read, with a throwaway consumer (no group, nothing committed).

Taking the end offsets when the read starts is what makes the join safe: the node is
already receiving deltas by then, so every record is either in the snapshot or a delta.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from quotaflow.settings import KafkaGroup

log = logging.getLogger(__name__)


async def read_snapshot(
    settings: KafkaGroup, keep: Callable[[bytes], bool], *, time_limit: float = 60.0
) -> list[bytes]:
    """Values of the latest record per key whose key `keep` accepts (tombstones drop a key)."""
    topic = settings.topics.quota_updates
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,  # no group: every partition is assigned, nothing is committed
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        client_id=f"{settings.app_id}-push-snapshot",
    )
    latest: dict[bytes, bytes] = {}
    async with asyncio.timeout(time_limit):
        try:
            await consumer.start()
            tps = sorted(consumer.assignment())
            while not tps:  # start() waits for the topic's metadata; assignment follows it
                await asyncio.sleep(0.01)
                tps = sorted(consumer.assignment())
            ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            while pending:
                batches = await consumer.getmany(*pending, timeout_ms=200, max_records=10_000)
                for tp, records in batches.items():
                    end = ends[tp]
                    for record in records:
                        if record.offset >= end or record.key is None:
                            continue
                        if record.value is None:
                            latest.pop(record.key, None)
                        elif keep(record.key):
                            latest[record.key] = record.value
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()
    log.info("snapshot read %d keys", len(latest), extra={"topic": topic, "keys": len(latest)})
    return list(latest.values())
