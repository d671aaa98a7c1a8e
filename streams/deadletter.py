"""The dead-letter record: the original bytes and headers, plus why and where it failed."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

REASON = "qf-dl-reason"
DETAIL = "qf-dl-detail"
SOURCE_TOPIC = "qf-dl-topic"
SOURCE_PARTITION = "qf-dl-partition"
SOURCE_OFFSET = "qf-dl-offset"
FAILED_AT = "qf-dl-at"


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
