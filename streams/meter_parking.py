"""Parked tenants of the meter reporter: whose jobs wait, which stay in memory, when to retry.

A meter job that cannot be sent for a reason that can pass parks its tenant (design
guarantee 7): the tenant's record cannot be read here (`tenant_unreadable`), it has no
Stripe key (`no_api_key`), or Stripe refuses its key (`unauthorized`, 401/403: revoked).
While parked, none of the tenant's jobs is sent; every other tenant's jobs flow.

Memory: a parked tenant keeps at most `limit` jobs in memory (`held`). The first of its jobs
that does not fit on a partition is remembered by offset only (`marks[tp]`), and every
later job of the tenant on that partition is let go; the reporter keeps the partition's
commit point at or below that mark (a floor), so nothing is lost: when the tenant is
released, the reporter seeks the partition back to the mark and re-reads it, taking only
that tenant's jobs up to where it had read (the others were handled already). So a parked
tenant costs at most `limit` jobs of memory whatever its volume, and never counts towards
the reporter's `max_queued`, which would stop everyone.

Retry: with exponential backoff (`base_backoff` doubling up to `max_backoff`, jittered)
the first held job is tried again; it goes through, and the tenant is released, or it
parks again. A change of the tenant's record (a key replaced, a record now readable)
makes the retry due at once (`retry_now`).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from aiokafka import TopicPartition

from streams.meter_client import MeterJob

__all__ = ["PARK_REASONS", "Entry", "Held", "ParkedTenant", "Parking"]

PARK_REASONS = frozenset({"tenant_unreadable", "no_api_key", "unauthorized"})
"""Outcomes that can pass: the job waits instead of being given up."""

Entry = tuple[TopicPartition, int, MeterJob]
Held = Literal["held", "marked", "let_go"]


@dataclass
class ParkedTenant:
    """One parked tenant: why, since when, what is held, where its let-go jobs start."""

    tenant_id: str
    reason: str
    since: float
    retry_at: float
    attempts: int = 0
    probing: bool = False
    held: deque[Entry] = field(default_factory=deque)
    marks: dict[TopicPartition, int] = field(default_factory=dict)


class Parking:
    """The parked tenants; pure bookkeeping on the monotonic clock (the reporter acts)."""

    def __init__(
        self,
        *,
        limit: int = 100,
        base_backoff: float = 1.0,
        max_backoff: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._base = base_backoff
        self._max = max_backoff
        self._clock = clock
        self.tenants: dict[str, ParkedTenant] = {}

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self.tenants

    def park(self, tenant_id: str, reason: str) -> ParkedTenant:
        """Parks the tenant (or parks it again after a failed retry), with the next retry."""
        now = self._clock()
        parked = self.tenants.get(tenant_id)
        if parked is None:
            parked = self.tenants[tenant_id] = ParkedTenant(tenant_id, reason, now, now)
        parked.reason = reason
        parked.probing = False
        ceiling = min(self._max, self._base * 2 ** min(parked.attempts, 16))
        parked.retry_at = now + ceiling * (0.5 + random.random() / 2)
        parked.attempts += 1
        return parked

    def hold(self, entry: Entry) -> Held:
        """Keeps a parked tenant's job in memory (`held`) if there is room and none of its
        jobs on that partition was let go yet; else lets it go: `marked` when its offset
        is the partition's new mark (the lowest let go: the commit point must not pass it
        until the partition is re-read from there), `let_go` when above the mark."""
        tp, offset, job = entry
        parked = self.tenants[job.tenant_id]
        mark = parked.marks.get(tp)
        if mark is not None:
            if offset < mark:  # an older job, parked after newer ones: the re-read starts here
                parked.marks[tp] = offset
                return "marked"
            return "let_go"
        if len(parked.held) < self.limit:
            parked.held.append(entry)
            return "held"
        parked.marks[tp] = offset
        return "marked"

    def due(self) -> Iterator[ParkedTenant]:
        """Tenants whose retry is due and not running."""
        now = self._clock()
        for parked in list(self.tenants.values()):
            if not parked.probing and parked.retry_at <= now:
                yield parked

    def retry_now(self, tenant_id: str) -> None:
        """The tenant's record changed: try again at once, from the shortest backoff."""
        parked = self.tenants.get(tenant_id)
        if parked is not None:
            parked.retry_at = self._clock()
            parked.attempts = 0

    def release(self, tenant_id: str) -> ParkedTenant | None:
        return self.tenants.pop(tenant_id, None)

    def forget(self, tps: set[TopicPartition]) -> None:
        """Partitions revoked: their held jobs and marks are another consumer's now."""
        for parked in self.tenants.values():
            parked.held = deque(e for e in parked.held if e[0] not in tps)
            for tp in tps:
                parked.marks.pop(tp, None)

    @property
    def held_jobs(self) -> int:
        return sum(len(p.held) for p in self.tenants.values())

    def age(self, parked: ParkedTenant) -> float:
        return self._clock() - parked.since

    def oldest_age(self) -> float:
        """Seconds since the longest-parked tenant was parked (0 if none)."""
        if not self.tenants:
            return 0.0
        return self._clock() - min(p.since for p in self.tenants.values())

    def by_reason(self) -> dict[str, int]:
        counts = dict.fromkeys(sorted(PARK_REASONS), 0)
        for parked in self.tenants.values():
            counts[parked.reason] = counts.get(parked.reason, 0) + 1
        return counts
