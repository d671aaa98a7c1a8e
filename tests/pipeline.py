"""Records as the ingress writes them, and the environment of a test's worker process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from quotaflow.envelope import Envelope
from quotaflow.ops.lag import Lag, consumer_lag
from quotaflow.settings import Settings

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]
PERIOD = (1_767_225_600, 1_769_904_000)


def stripe_record(tenant: str, body: dict[str, Any]) -> Record:
    env = Envelope(tenant, str(body["id"]), str(body["type"]), False, time.time(), "s1")
    return tenant.encode(), orjson.dumps(body), env.headers()


def worker_env(settings: Settings, tenants_file: Path, data: Path, **extra: str) -> dict[str, str]:
    """`quotaflow worker` on the test's topics, snapshot mode; `extra`: QUOTAFLOW_* overrides."""
    return {
        "QUOTAFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "QUOTAFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "QUOTAFLOW_PARTITIONS": str(settings.partitions),
        "QUOTAFLOW_APP_ID": settings.app_id,
        "QUOTAFLOW_DATA_DIR": str(data),
        "QUOTAFLOW_STORE": "memory://",
        "QUOTAFLOW_TENANTS_FILE": str(tenants_file),
        "QUOTAFLOW_STRIPE_FETCH": "false",
        **{f"QUOTAFLOW_{k.upper()}": v for k, v in extra.items()},
    }


async def wait_committed(
    settings: Settings, timeout: float = 120.0, topics: Sequence[str] | None = None
) -> None:
    """Waits until the worker's group has committed every record of `topics`
    (default: `stripe.events`)."""
    wanted = set(topics or [settings.topics.stripe_events])
    deadline = time.monotonic() + timeout
    behind: list[Lag] = []
    while time.monotonic() < deadline:
        rows = await consumer_lag(settings, group=settings.app_id)
        source = [r for r in rows if r.topic in wanted]
        behind = [r for r in source if r.lag]
        if {r.topic for r in source} == wanted and not behind:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"the worker did not catch up: {behind}")
