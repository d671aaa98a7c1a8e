"""Reads every byte of a topic (keys, values, headers; aborted transactions included)."""

from __future__ import annotations

import orjson

from quotaflow.commands.tenants.topicscan import scan_topic


async def topic_bytes(bootstrap: str, topic: str) -> list[bytes]:
    out: list[bytes] = []
    async for _, m in scan_topic(bootstrap, topic, committed_only=False):
        parts = [m.key or b"", m.value or b""] + [k.encode() + v for k, v in m.headers]
        out.append(b"".join(parts))
    return out


async def audit_records(bootstrap: str, topic: str) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    async for _, m in scan_topic(bootstrap, topic):
        records.append(orjson.loads(m.value))
    return records
