"""Committing the offsets a consumer may commit, and only those that moved.

The pusher and the notifier both own their offsets (a record counts as done only once
every node, or the endpoint, has it), compute what is safe to commit, and commit it on a
timer and on revocation. A commit that fails or times out is logged and left to the next
call: the offsets it carried are still the safe ones then, so nothing is lost, only
redelivered after a crash (both consumers are idempotent at their receivers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

__all__ = ["commit_moved"]


async def commit_moved(
    consumer: AIOKafkaConsumer,
    safe: Mapping[TopicPartition, int],
    committed: dict[TopicPartition, int],
    *,
    only: set[TopicPartition] | None,
    timeout: float,
    log: logging.Logger,
) -> None:
    """Commits the `safe` offsets that differ from `committed` (restricted to `only`), and
    records them in `committed` once the broker has them. Shielded: a caller cancelled
    mid-commit (a rebalance) does not leave the commit half-sent."""
    offsets = {
        tp: offset
        for tp, offset in safe.items()
        if committed.get(tp) != offset and (only is None or tp in only)
    }
    if not offsets:
        return
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(consumer.commit(offsets))
    except (KafkaError, TimeoutError) as exc:
        log.warning("offset commit failed", extra={"error": type(exc).__name__})
        return
    committed.update(offsets)
