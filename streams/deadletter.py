"""The dead-letter record: the original bytes and headers, plus why and where it failed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger("quotaflow.deadletter")

REASON = "qf-dl-reason"
DETAIL = "qf-dl-detail"
SOURCE_TOPIC = "qf-dl-topic"
SOURCE_PARTITION = "qf-dl-partition"
SOURCE_OFFSET = "qf-dl-offset"
FAILED_AT = "qf-dl-at"
# Set by `quotaflow deadletter redrive` on the records it sends back (`partition:offset`).
REDRIVE = "qf-redrive"
# Set by `quotaflow replay` on its copies. A replayed copy of a re-driven record is a
# replay (its guards hold), not a second re-drive.
REPLAY = "qf-replay"


def deadletter_headers(
    original: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
    *,
    reason: str,
    detail: str,
    source_topic: str,
    partition: int,
    offset: int,
) -> list[tuple[str, bytes]]:
    """The original headers followed by the dead-letter facts; detail is capped at 1 KiB."""
    items = list(original.items() if isinstance(original, Mapping) else original)
    return [
        *items,
        (REASON, reason.encode()),
        (DETAIL, detail.encode()[:1024]),
        (SOURCE_TOPIC, source_topic.encode()),
        (SOURCE_PARTITION, str(partition).encode()),
        (SOURCE_OFFSET, str(offset).encode()),
        (FAILED_AT, repr(time.time()).encode()),
    ]


async def send_deadletter(deadletter: Any, event: Any, *, reason: str, detail: str) -> None:
    """Sends a Faust `event` that could not be applied to the `deadletter` topic.

    Same partition as the source, so a tenant's letters stay in order with its events; the
    agent then moves on, so one bad record never stops it or loses its place.
    """
    message = event.message
    log.warning(
        "dead letter",
        extra={"reason": reason, "detail": detail[:200], "source_topic": message.topic},
    )
    await deadletter.send(
        key=event.key,
        value=event.value,
        headers=deadletter_headers(
            event.headers,
            reason=reason,
            detail=detail,
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        ),
        partition=message.partition,
    )
