"""Faust topics and tables of raw bytes: the domain owns every encoding, Faust none.

Raw codecs keep a record byte-exact (the verified Stripe body) and let `tables/` decide
how a state is stored. Every table also gets the same RocksDB memory caps.
"""

from __future__ import annotations

from typing import Any

import faust

from quotaflow.settings import KafkaGroup, WorkerSettings
from streams.processing.effects import Record, record_of
from tables.outcome import Outcome
from tables.quota import QUOTA_UPDATE_SCHEMA
from wire import SCHEMA_HEADER

# RocksDB's defaults (per table partition: a 2 GiB block cache, 3 x 64 MiB write
# buffers) would let eight partitions claim gigabytes. These cap each partition near
# 24 MiB; the scale benchmark in BENCHMARKS.md measures what many keys then cost.
ROCKSDB_OPTIONS = {
    "block_cache_size": 16 * 1024 * 1024,
    "block_cache_compressed_size": 0,
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "max_open_files": 256,
}


def raw_topic(app: faust.App, settings: KafkaGroup, name: str) -> faust.TopicT:
    return app.topic(
        name,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )


class TrackedTable(faust.Table):  # type: ignore[type-arg]
    """A table whose changelog sends can be awaited: `Sink` publishes a quota record only
    once the changelog record of the state behind it is in Kafka. (Faust's producer
    flush is no such barrier: a record its buffer task has taken but not yet handed to
    the client is in neither queue, and the flush returns without it.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Any] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self.sent.append(fut)
        return fut

    def take_sent(self) -> list[Any]:
        sent, self.sent = self.sent, []
        return sent


def raw_table(app: faust.App, settings: WorkerSettings, name: str) -> Any:
    """A table co-partitioned with the topics; bytes types make its changelog raw too."""
    return app.Table(
        name,
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        options=ROCKSDB_OPTIONS if settings.store.startswith("rocksdb") else None,
    )


async def publish(quota_updates: faust.TopicT, outcome: Outcome, partition: int) -> None:
    """Sends what `outcome` publishes, in order, in the partition of the input it came from."""
    for update in outcome.published():
        await quota_updates.send(
            key=update.key.encode(),
            value=update.to_json(),
            partition=partition,
            headers=[(SCHEMA_HEADER, QUOTA_UPDATE_SCHEMA)],
        )


def record_from(event: Any) -> Record:
    """The processors' view of a Faust event."""
    m = event.message
    return record_of(m.topic, m.partition, m.offset, event.key, event.value, event.headers)
