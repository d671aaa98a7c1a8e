"""Topics are created explicitly, with the design's partitions and cleanup policies."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from quotaflow.settings import Settings
from quotaflow.topics import _CHECKED, TopicsMismatch, ensure_topics, mismatches, topic_specs
from tests.pipeline import worker_env

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
            t.notifications,
            t.notification_endpoints,
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


def _configs(settings: Settings, **override: str) -> dict[str, dict[str, str]]:
    return {
        s.name: {**{k: v for k, v in s.config.items() if k in _CHECKED}, **override}
        for s in topic_specs(settings)
    }


def test_topics_as_created_have_no_mismatch_and_each_difference_is_named() -> None:
    settings = Settings(partitions=4, replication=3, app_id="qf")
    t = settings.topics
    right = {s.name: s.partitions for s in topic_specs(settings)}
    right["qf-customers-changelog"] = 4
    right["someone-elses-changelog"] = 7  # not this app's: not checked
    assert mismatches(settings, right, _configs(settings)) == []
    assert all(s.config["min.insync.replicas"] == "2" for s in topic_specs(settings))

    wrong = {**right, t.usage_events: 5, "qf-customers-changelog": 2}
    configs = _configs(settings)
    configs[t.quota_updates] = {"cleanup.policy": "delete", "min.insync.replicas": "2"}
    configs[t.stripe_events] = {"cleanup.policy": "delete", "min.insync.replicas": "1"}
    assert mismatches(settings, wrong, configs) == [
        "qf-customers-changelog has 2 partitions, not 4",
        f"{t.quota_updates} has cleanup.policy=delete, not compact",
        f"{t.stripe_events} has min.insync.replicas=1, not at least 2",
        f"{t.usage_events} has 5 partitions, not 4",
    ]
    # One replica: one in-sync replica is all there can be.
    single = Settings(partitions=4, replication=1, app_id="qf")
    assert all(s.config["min.insync.replicas"] == "1" for s in topic_specs(single))


async def _create(settings: Settings, topic: NewTopic) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([topic])
    finally:
        await admin.close()


def test_a_topic_with_another_partition_count_stops_start_up_with_one_line(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(partitions=2)
    asyncio.run(_create(settings, NewTopic(settings.topics.usage_events, 3, 1)))
    with pytest.raises(TopicsMismatch, match=f"{settings.topics.usage_events} has 3 partitions"):
        asyncio.run(ensure_topics(settings))

    tenants = tmp_path / "tenants.json"
    tenants.write_bytes(b"[]")
    env = {**os.environ, **worker_env(settings, tenants, tmp_path / "data", stripe=None)}
    for command in (["topics"], ["worker"], ["push", "--region", "eu"], ["ingress"]):
        done = subprocess.run(
            [sys.executable, "-m", "quotaflow.commands.cli", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, (command, done.stderr[-2000:])
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: topics differ from the design:"), (command, last)
        assert f"{settings.topics.usage_events} has 3 partitions, not 2" in last
        assert "Traceback" not in done.stderr
