"""Endpoints the notifier disabled, on the compacted `notifications.endpoints` topic.

The notifier holds no tenants signing key (it could then rewrite any tenant), so it does
not change tenant documents: when it gives up on an endpoint it writes
`{"disabled": true, "at", "reason"}` under `tenant/endpoint`, and an audit record on
`tenants.audit` (actor `notifier`). `quotaflow notifications enable` writes
`{"disabled": false, …}` (audited as the operator). Every notifier follows the topic, so
a disable or an enable reaches all of them, and a restarted one starts where it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from quotaflow.settings import KafkaGroup
from quotaflow.tenants.config import audit_topic

__all__ = ["EndpointStates", "disable_record", "state_key"]

log = logging.getLogger("quotaflow.notifier")


def state_key(tenant_id: str, endpoint_id: str) -> bytes:
    return f"{tenant_id}/{endpoint_id}".encode()


def disable_record(disabled: bool, reason: str, actor: str) -> bytes:
    return orjson.dumps({"disabled": disabled, "at": time.time(), "reason": reason, "actor": actor})


def audit_of(tenant_id: str, endpoint_id: str, disabled: bool, reason: str, actor: str) -> bytes:
    """The `tenants.audit` record of a disable or enable (no secret is involved)."""
    return orjson.dumps(
        {
            "ts": time.time(),
            "actor": actor,
            "action": f"notification-endpoint-{'disabled' if disabled else 'enabled'}",
            "tenant_id": tenant_id,
            "changes": [
                {
                    "field": f"notification_endpoints.{endpoint_id}.delivering",
                    "from": disabled,
                    "to": not disabled,
                }
            ],
            "reason": reason,
        }
    )


async def write_state(
    producer: AIOKafkaProducer,
    settings: KafkaGroup,
    tenant_id: str,
    endpoint_id: str,
    *,
    disabled: bool,
    reason: str,
    actor: str,
    timeout: float = 30.0,
) -> None:
    """Writes the state and its audit record, both acknowledged (acks=all)."""
    async with asyncio.timeout(timeout):
        await producer.send_and_wait(
            settings.topics.notification_endpoints,
            key=state_key(tenant_id, endpoint_id),
            value=disable_record(disabled, reason, actor),
        )
        await producer.send_and_wait(
            audit_topic(settings),
            key=tenant_id.encode(),
            value=audit_of(tenant_id, endpoint_id, disabled, reason, actor),
        )


class EndpointStates:
    """Follows `notifications.endpoints`; `disabled(tenant, endpoint)` answers from it."""

    def __init__(self, settings: KafkaGroup, on_change: Callable[[str, str, bool], None]) -> None:
        self._settings = settings
        self._on_change = on_change
        self._disabled: dict[tuple[str, str], str] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self.caught_up = asyncio.Event()

    def disabled(self, tenant_id: str, endpoint_id: str) -> str | None:
        """Why the notifier disabled the endpoint, or None if it delivers."""
        return self._disabled.get((tenant_id, endpoint_id))

    def mark(self, tenant_id: str, endpoint_id: str, reason: str) -> None:
        """Our own disable, known at once (the topic confirms it later)."""
        self._disabled[(tenant_id, endpoint_id)] = reason

    def all_disabled(self) -> dict[tuple[str, str], str]:
        return dict(self._disabled)

    async def start(self, timeout: float = 30.0) -> None:
        tp = TopicPartition(self._settings.topics.notification_endpoints, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=200,
        )
        async with asyncio.timeout(timeout):
            await consumer.start()
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        self._consumer = consumer
        end = (await consumer.end_offsets([tp]))[tp]
        async with asyncio.timeout(timeout):
            while await consumer.position(tp) < end:
                self._apply_batch(await consumer.getmany(tp, timeout_ms=200))
        self.caught_up.set()

    async def follow(self) -> None:
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("EndpointStates is not started")
        while True:
            self._apply_batch(await consumer.getmany(timeout_ms=500))

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def _apply_batch(self, batches: dict[TopicPartition, list]) -> None:  # type: ignore[type-arg]
        for records in batches.values():
            for record in records:
                try:
                    tenant_id, endpoint_id = record.key.decode().split("/", 1)
                    doc = orjson.loads(record.value)
                except (AttributeError, ValueError, orjson.JSONDecodeError):
                    log.warning("unreadable endpoint state record", extra={"offset": record.offset})
                    continue
                key = (tenant_id, endpoint_id)
                if doc.get("disabled"):
                    self._disabled[key] = str(doc.get("reason") or "disabled")
                    self._on_change(tenant_id, endpoint_id, True)
                elif key in self._disabled:
                    del self._disabled[key]
                    self._on_change(tenant_id, endpoint_id, False)
