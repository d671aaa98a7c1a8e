"""Topics are created explicitly, with the design's partitions and cleanup policies."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics

pytestmark = pytest.mark.kafka


async def test_ensure_topics_creates_each_topic_once_with_its_policy(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(partitions=3)
    created = await ensure_topics(settings)
    t = settings.topics
    assert sorted(created) == sorted(
        [
            t.stripe_events,
            t.usage_events,
            t.tenants,
            t.tenants_audit,
            t.quota_updates,
            t.deadletter,
            t.deadletter_redriven,
            t.meter_jobs,
            t.edge_nodes,
            t.quota_ticks,
        ]
    )
    assert await ensure_topics(settings) == []

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = {d["topic"]: d for d in await admin.describe_topics(created)}
        assert len(described[t.stripe_events]["partitions"]) == 3
        assert len(described[t.quota_updates]["partitions"]) == 3
        assert len(described[t.tenants]["partitions"]) == 1
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t.quota_updates)]
        )
        entries = {e[0]: e[1] for e in configs[0].resources[0][4]}
        assert entries["cleanup.policy"] == "compact"
    finally:
        await admin.close()
