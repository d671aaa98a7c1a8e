"""`quota show`: the current quotas of a tenant, read from the compacted `quota.updates`.

`quota.updates` is partitioned by tenant, so only the tenant's partition is read; the
latest record per key wins and a tombstone removes the key, as for any consumer.
"""

from __future__ import annotations

from quotaflow.settings import KafkaGroup
from quotaflow.topicread import Position, TopicReader, Tracker, tenant_partition
from tables.quota import QuotaUpdate, quota_key


async def current_quotas(
    settings: KafkaGroup,
    tenant: str,
    customer: str | None = None,
    *,
    progress: Tracker | None = None,
) -> dict[str, QuotaUpdate]:
    """Latest quota per `tenant/customer` key (only `customer`'s when given)."""
    prefix = f"{tenant}/".encode()
    exact = None if customer is None else quota_key(tenant, customer).encode()
    latest: dict[str, QuotaUpdate] = {}
    async with TopicReader(settings, settings.topics.quota_updates) as reader:
        partitions = await reader.partitions()
        spans = await reader.spans(
            [tenant_partition(tenant, len(partitions))], Position(edge="beginning")
        )
        async for record in reader.records(spans, progress):
            key = record.key or b""
            if (exact is not None and key != exact) or not key.startswith(prefix):
                continue
            if record.value is None:
                latest.pop(key.decode(), None)
                continue
            update = QuotaUpdate.from_json(record.value)
            held = latest.get(update.key)
            if held is None or update.version >= held.version:
                latest[update.key] = update
    return latest
