"""Replay: re-produces a slice of `stripe.events` or `usage.events` to the same topic.

Each selected record goes back to the topic it came from, to the same partition (the
tenant's), with the same key, its value and headers byte for byte, plus `qf-replay`
(the replay's id) and `qf-replay-of` (`partition:offset` of the original). The worker
treats a replayed record like a Stripe redelivery: state remembers the event ids and
usage batch ids it applied, so a replay changes nothing that was already applied and
applies what was missed (after a fix, or a worker that skipped something).

The end of every partition is fixed when the replay starts, so a replay never reads its
own output. Records that are themselves replays are skipped: replaying them again would
only double the copies.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from quotaflow.commands.ops.exceptions import OpsError
from quotaflow.envelope import EVENT_TYPE
from quotaflow.produce import OpsProducer
from quotaflow.settings import KafkaGroup
from quotaflow.topicread import Position, Span, TopicReader, Tracker, header, tenant_partition
from streams.deadletter import REPLAY as REPLAY  # re-exported: the header replay sets

REPLAY_OF = "qf-replay-of"
TOPICS = ("stripe.events", "usage.events")


@dataclass
class ReplayReport:
    """What a replay selected and (unless dry) sent."""

    replay_id: str
    topic: str
    spans: list[Span]
    scanned: int = 0
    selected: int = 0
    sent: int = 0
    skipped_replays: int = 0
    dry_run: bool = False
    by_type: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "topic": self.topic,
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "selected": self.selected,
            "sent": self.sent,
            "skipped_replays": self.skipped_replays,
            "by_type": dict(self.by_type),
            "spans": [{"partition": s.partition, "from": s.start, "to": s.end} for s in self.spans],
        }


def topic_name(settings: KafkaGroup, logical: str) -> str:
    """`stripe.events` or `usage.events` → the prefixed topic name."""
    if logical == "stripe.events":
        return settings.topics.stripe_events
    if logical == "usage.events":
        return settings.topics.usage_events
    raise OpsError(f"replay reads {' or '.join(TOPICS)}, not {logical!r}")


async def replay(
    settings: KafkaGroup,
    logical_topic: str,
    start: Position,
    stop: Position | None = None,
    *,
    tenant: str | None = None,
    event_type: str | None = None,
    dry_run: bool = False,
    rate: float | None = None,
    progress: Tracker | None = None,
) -> ReplayReport:
    """Re-produces the selected records; returns once every one is acknowledged."""
    topic = topic_name(settings, logical_topic)
    report = ReplayReport(
        f"r-{int(time.time())}-{uuid.uuid4().hex[:8]}", topic, [], dry_run=dry_run
    )
    wanted_key = None if tenant is None else tenant.encode()
    wanted_type = None if event_type is None else event_type.encode()
    stamp = [(REPLAY, report.replay_id.encode())]
    async with TopicReader(settings, topic) as reader:
        partitions = await reader.partitions()
        if tenant is not None:
            partitions = [tenant_partition(tenant, len(partitions))]
        report.spans = await reader.spans(partitions, start, stop)
        async with OpsProducer(settings, rate=rate) as producer:
            async for record in reader.records(report.spans, progress):
                report.scanned += 1
                headers = list(record.headers or ())
                if wanted_key is not None and record.key != wanted_key:
                    continue
                kind = header(headers, EVENT_TYPE)
                if wanted_type is not None and kind != wanted_type:
                    continue
                if header(headers, REPLAY) is not None:
                    report.skipped_replays += 1
                    continue
                report.selected += 1
                report.by_type[(kind or b"-").decode(errors="replace")] += 1
                if dry_run:
                    continue
                origin = f"{record.partition}:{record.offset}".encode()
                await producer.send(
                    topic,
                    record.value,
                    key=record.key,
                    headers=[*headers, *stamp, (REPLAY_OF, origin)],
                    partition=record.partition,
                )
                report.sent += 1
            await producer.flush()
    return report
