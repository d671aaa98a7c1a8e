"""Creates every topic quotaflow owns, with explicit partitions and cleanup policies.

Broker auto-creation is never relied on: a topic created with the broker's defaults would
get the wrong partition count, and co-partitioned tables would fail on their first write.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from quotaflow.settings import Settings

log = logging.getLogger("quotaflow.topics")

FOURTEEN_DAYS_MS = 14 * 24 * 3600 * 1000
ONE_DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The design's topic table: keyed by tenant, compacted where the latest value matters."""
    t, n = settings.topics, settings.partitions
    keep = {"cleanup.policy": "delete", "retention.ms": str(FOURTEEN_DAYS_MS)}
    compact = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    return [
        TopicSpec(t.stripe_events, n, keep),
        TopicSpec(t.usage_events, n, keep),
        TopicSpec(t.tenants, 1, compact),
        # One partition: one total order of changes. Kept forever: an audit trail that
        # expires is not one.
        TopicSpec(t.tenants_audit, 1, {"cleanup.policy": "delete", "retention.ms": "-1"}),
        TopicSpec(t.quota_updates, n, compact),
        TopicSpec(t.deadletter, n, {"cleanup.policy": "delete"}),
        # Which dead letters `quotaflow deadletter redrive` already re-drove (one total order).
        TopicSpec(t.deadletter_redriven, 1, compact),
        # Internal: usage to report to Stripe Billing meters (streams/meter_reporter.py).
        TopicSpec(t.meter_jobs, n, keep),
        # Edge nodes' signed announcements (tables/edge_node.py): one small total order.
        TopicSpec(t.edge_nodes, 1, compact),
        # Internal: "re-evaluate this customer now" (streams/grace.py); a tick is only
        # useful for minutes, a day is margin for a worker that was down.
        TopicSpec(t.quota_ticks, n, {"cleanup.policy": "delete", "retention.ms": str(ONE_DAY_MS)}),
    ]


async def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Creates the missing topics; returns the names it created. Existing ones are kept."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=int(timeout * 1000)
    )
    async with asyncio.timeout(timeout):
        await admin.start()
    try:
        async with asyncio.timeout(timeout):
            existing = set(await admin.list_topics())
            missing = [s for s in topic_specs(settings) if s.name not in existing]
            created = []
            if missing:
                response = await admin.create_topics(
                    [
                        NewTopic(s.name, s.partitions, settings.replication, topic_configs=s.config)
                        for s in missing
                    ]
                )
                for name, code, *_ in response.topic_errors:
                    if code == 0:
                        created.append(name)
                    elif code != TopicAlreadyExistsError.errno:
                        # another component may create it between list and create: fine
                        raise for_code(code)(f"cannot create topic {name}")
            if created:
                log.info("created topics", extra={"topics": created})
            return created
    finally:
        await admin.close()
