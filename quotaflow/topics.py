"""Creates every topic quotaflow owns, with explicit partitions and policies, and checks the
ones that already exist.

Broker auto-creation is never relied on: a topic created with the broker's defaults would
get the wrong partition count, and co-partitioned tables would fail on their first write.
Every component calls `ensure_topics` at start, so a topic that exists with another
partition count (co-partitioning of the tenant-keyed topics and the worker's changelogs
breaks silently otherwise), another cleanup policy, or fewer in-sync replicas than an
acknowledged write needs, stops the component with a one-line reason (`TopicsMismatch`)
instead of running on it.

`min.insync.replicas` is min(2, replication): with `acks=all` an acknowledged record is
then on two disks whenever the topic has two replicas (the broker default, 1, would let
an acknowledged webhook live on one).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from quotaflow.exceptions import ConfigurationError
from quotaflow.settings import KafkaGroup

log = logging.getLogger("quotaflow.topics")

FOURTEEN_DAYS_MS = 14 * 24 * 3600 * 1000
ONE_DAY_MS = 24 * 3600 * 1000
# Dead letters wait for an operator: long enough for a holiday and a fix to ship.
NINETY_DAYS_MS = 90 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: KafkaGroup) -> list[TopicSpec]:
    """The design's topic table: keyed by tenant, compacted where the latest value matters."""
    t, n = settings.topics, settings.partitions
    isr = {"min.insync.replicas": str(min_insync_replicas(settings))}
    keep = {"cleanup.policy": "delete", "retention.ms": str(FOURTEEN_DAYS_MS)}
    compact = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    specs = [
        TopicSpec(t.stripe_events, n, keep),
        TopicSpec(t.usage_events, n, keep),
        TopicSpec(t.tenants, 1, compact),
        # One partition: one total order of changes. Kept forever: an audit trail that
        # expires is not one.
        TopicSpec(t.tenants_audit, 1, {"cleanup.policy": "delete", "retention.ms": "-1"}),
        TopicSpec(t.quota_updates, n, compact),
        TopicSpec(
            t.deadletter, n, {"cleanup.policy": "delete", "retention.ms": str(NINETY_DAYS_MS)}
        ),
        # Which dead letters `quotaflow deadletter redrive` already re-drove (one total order).
        TopicSpec(t.deadletter_redriven, 1, compact),
        # Internal: usage to report to Stripe Billing meters (streams/meter_reporter.py).
        TopicSpec(t.meter_jobs, n, keep),
        # Edge nodes' signed announcements (tables/edge_node.py): one small total order.
        TopicSpec(t.edge_nodes, 1, compact),
        # Internal: "re-evaluate this customer now" (streams/grace.py); a tick is only
        # useful for minutes, a day is margin for a worker that was down.
        TopicSpec(t.quota_ticks, n, {"cleanup.policy": "delete", "retention.ms": str(ONE_DAY_MS)}),
        # Tenant notifications (tables/notification.py), keyed by tenant; kept well past the
        # notifier's retry window, which commits only what is delivered or dead-lettered.
        TopicSpec(t.notifications, n, keep),
        # Endpoints the notifier disabled (streams/notifier/state.py): one small total order.
        TopicSpec(t.notification_endpoints, 1, compact),
    ]
    return [TopicSpec(s.name, s.partitions, {**s.config, **isr}) for s in specs]


def min_insync_replicas(settings: KafkaGroup) -> int:
    return min(2, settings.replication)


class TopicsMismatch(ConfigurationError):
    """Existing topics differ from what the design needs; the message names each one."""


def mismatches(
    settings: KafkaGroup, partitions: dict[str, int], configs: dict[str, dict[str, str]]
) -> list[str]:
    """What is wrong with the existing topics, one phrase each (empty: nothing).

    `partitions` and `configs` describe the topics that exist. Besides quotaflow's own
    topics, the worker's changelogs (`{app_id}-…-changelog`) must have the tenant-keyed
    topics' partition count: Faust co-partitions every table with its source.
    """
    problems: list[str] = []
    wanted = {s.name: s for s in topic_specs(settings)}
    need_isr = min_insync_replicas(settings)
    for name, count in sorted(partitions.items()):
        spec = wanted.get(name)
        if spec is None:
            if is_changelog(settings, name) and count != settings.partitions:
                problems.append(f"{name} has {count} partitions, not {settings.partitions}")
            continue
        if count != spec.partitions:
            problems.append(f"{name} has {count} partitions, not {spec.partitions}")
        held = configs.get(name, {})
        policy = held.get("cleanup.policy")
        if policy is not None and policy != spec.config["cleanup.policy"]:
            problems.append(
                f"{name} has cleanup.policy={policy}, not {spec.config['cleanup.policy']}"
            )
        isr = held.get("min.insync.replicas")
        if isr is not None and int(isr) < need_isr:
            problems.append(f"{name} has min.insync.replicas={isr}, not at least {need_isr}")
    return problems


def is_changelog(settings: KafkaGroup, name: str) -> bool:
    """A changelog topic of this worker app's Faust tables."""
    return name.startswith(f"{settings.app_id}-") and name.endswith("-changelog")


async def ensure_topics(settings: KafkaGroup, timeout: float = 30.0) -> list[str]:
    """Creates the missing topics and checks the existing ones; returns the names created.

    `TopicsMismatch` if an existing topic differs from the design (nothing is changed:
    repartitioning or re-policing a topic is an operator's decision).
    """
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
            # Every topic of ours exists now (created here, or by someone else meanwhile).
            await _check(admin, settings, existing | {s.name for s in topic_specs(settings)})
            return created
    finally:
        await admin.close()


async def _check(admin: AIOKafkaAdminClient, settings: KafkaGroup, existing: set[str]) -> None:
    ours = {s.name for s in topic_specs(settings)} & existing
    changelogs = {name for name in existing if is_changelog(settings, name)}
    names = sorted(ours | changelogs)
    if not names:
        return
    partitions = await _partition_counts(admin, names)
    configs: dict[str, dict[str, str]] = {}
    if ours:
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, configs=dict.fromkeys(_CHECKED))
                for name in sorted(ours)
            ]
        )
        for response in responses:
            for _code, _msg, _type, name, entries in response.resources:
                configs[name] = {entry[0]: entry[1] for entry in entries}
    problems = mismatches(settings, partitions, configs)
    if problems:
        raise TopicsMismatch(
            "topics differ from the design: "
            + "; ".join(problems)
            + " (fix them with kafka-topics/kafka-configs, or use a new QUOTAFLOW_TOPIC_PREFIX)"
        )


_CHECKED = ("cleanup.policy", "min.insync.replicas")


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partitions per topic, once the metadata shows every topic whole: a topic created a
    moment ago describes with no partitions (leader not yet elected) for a little while.
    The caller's timeout bounds the wait."""
    while True:
        described = await admin.describe_topics(names)
        if all(d["error_code"] == 0 and d["partitions"] for d in described):
            return {d["topic"]: len(d["partitions"]) for d in described}
        await asyncio.sleep(0.05)
