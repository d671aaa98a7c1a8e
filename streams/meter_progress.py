"""The meter reporter's progress per partition: what may be committed.

The commit point of a partition is the lowest of: the next offset to read, every offset
handed out and not finished, and every floor (the mark of a parked tenant's jobs let go
from memory, or of a partition being re-read after a release). Nothing below it is ever
needed again; everything at or above it is read again after a restart.
"""

from __future__ import annotations

from aiokafka import TopicPartition

__all__ = ["Progress"]


class Progress:
    """Per partition: offsets handed out and not finished, and floors (offsets of jobs let
    go from memory that must be read again); the commit point is below both."""

    def __init__(self) -> None:
        self.open: dict[TopicPartition, set[int]] = {}
        self.next: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.floors: dict[TopicPartition, dict[str, int]] = {}

    def set_floor(self, tp: TopicPartition, owner: str, offset: int) -> None:
        floors = self.floors.setdefault(tp, {})
        floors[owner] = min(floors.get(owner, offset), offset)

    def clear_floor(self, tp: TopicPartition, owner: str) -> None:
        floors = self.floors.get(tp)
        if floors is not None:
            floors.pop(owner, None)
            if not floors:
                del self.floors[tp]

    def taken(self, tp: TopicPartition, offset: int) -> None:
        self.open.setdefault(tp, set()).add(offset)
        self.next[tp] = max(self.next.get(tp, 0), offset + 1)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        self.open.get(tp, set()).discard(offset)

    def commit_points(self) -> dict[TopicPartition, int]:
        points = {}
        for tp, nxt in self.next.items():
            point = min([nxt, *self.open.get(tp, ()), *self.floors.get(tp, {}).values()])
            if self.committed.get(tp) != point:
                points[tp] = point
        return points

    def forget(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self.open.pop(tp, None)
            self.next.pop(tp, None)
            self.committed.pop(tp, None)
            self.floors.pop(tp, None)
