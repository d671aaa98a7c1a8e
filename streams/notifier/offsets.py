"""What the notifier may commit: per partition, the lowest offset still owed a delivery.

A record is open from the moment it is read until each endpoint it was routed to has it
delivered or dead-lettered; the committable offset of a partition is its lowest open
record, or the position after the last record read. So a restart re-reads whatever was
not finished, and nothing past an unfinished record is ever committed.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["OffsetTracker"]


class OffsetTracker:
    def __init__(self) -> None:
        self._open: dict[Hashable, dict[int, int]] = {}
        self._position: dict[Hashable, int] = {}

    def read(self, tp: Hashable, offset: int, owed: int) -> None:
        """`offset` was read and routed to `owed` endpoint queues (0: nothing to wait for)."""
        if owed > 0:
            self._open.setdefault(tp, {})[offset] = owed
        self._position[tp] = max(self._position.get(tp, 0), offset + 1)

    def settled(self, tp: Hashable, offset: int) -> None:
        """One of the deliveries owed for `offset` is delivered or dead-lettered."""
        owed = self._open.get(tp)
        if owed is None or offset not in owed:
            return
        owed[offset] -= 1
        if owed[offset] <= 0:
            del owed[offset]

    def forget(self, tp: Hashable) -> None:
        """The partition was revoked: another notifier takes it from the last commit."""
        self._open.pop(tp, None)
        self._position.pop(tp, None)

    def committable(self) -> dict[Hashable, int]:
        out: dict[Hashable, int] = {}
        for tp, position in self._position.items():
            owed = self._open.get(tp)
            out[tp] = min(owed) if owed else position
        return out

    @property
    def open_count(self) -> int:
        return sum(len(o) for o in self._open.values())
