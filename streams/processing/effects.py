"""What the processors read and what they hand back: records, a store, effects.

The processors (`billing`, `usage`, `grace`) are plain Python: they see Kafka records and
a key-value store and return `Effects`, the list of things to write, publish and
dead-letter. They import no Faust and do no I/O, so a test drives them with a dict in
microseconds; `streams/sink.py` carries the effects out through Faust.

One batch of records reads each customer's state once and writes it once (`StateCache`),
and publishes one quota record per quota key (the last version): a burst of events for
one customer costs one decode, one encode, one changelog record and one push.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tables.billing_state import CustomerState
from tables.notification import Notification
from tables.outcome import Outcome
from tables.quota import QuotaUpdate

__all__ = [
    "DeadLetterOut",
    "Effects",
    "MeterJob",
    "Record",
    "StateCache",
    "Store",
    "record_of",
]


class Store(Protocol):
    """The key-value view of a table a processor needs (a Faust table or a dict)."""

    def get(self, key: bytes, /) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Record:
    """A Kafka record as the processors see it: position, key, value, headers."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class DeadLetterOut:
    """A record to send to `deadletter`, with why."""

    record: Record
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class MeterJob:
    """A `meter.jobs` record."""

    partition: int
    key: bytes
    value: bytes


@dataclass(slots=True)
class Effects:
    """Everything one processed batch asks for, in the order it must happen.

    `states` and `aliases` are table writes (key -> (partition, value)); `updates` holds the
    last quota record per quota key, in publish order (a retirement before the record
    that replaces it); the rest are sends. `outcomes` counts records by what they did.
    """

    states: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    aliases: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    updates: dict[str, tuple[int, QuotaUpdate]] = field(default_factory=dict)
    deadletters: list[DeadLetterOut] = field(default_factory=list)
    meter_jobs: list[MeterJob] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    # Tenant notifications (issue 17), in derivation order, with the partition they go to;
    # a re-emitted one may repeat an id (the notifier deduplicates).
    notifications: list[tuple[int, Notification]] = field(default_factory=list)
    # (region, node id) of usage batches that opened a new spool incarnation of a node
    # another incarnation had reported for (a reset spool), once per customer state.
    spool_resets: list[tuple[str, str]] = field(default_factory=list)

    def publish(self, partition: int, outcome: Outcome) -> bool:
        """Queues what `outcome` publishes; a key seen before keeps only its newest."""
        published = outcome.published()
        for update in published:
            self.updates.pop(update.key, None)  # re-inserted last: publish order follows
            self.updates[update.key] = (partition, update)
        return bool(published)

    def dead(self, record: Record, reason: str, detail: str) -> None:
        self.deadletters.append(DeadLetterOut(record, reason, detail))

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def quota_updates(self) -> Iterable[tuple[int, QuotaUpdate]]:
        return self.updates.values()


class StateCache:
    """Customer states of one batch: each read and decoded once, each encoded once."""

    __slots__ = ("_changed", "_partitions", "_states", "_store")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._states: dict[bytes, CustomerState | None] = {}
        self._changed: set[bytes] = set()
        self._partitions: dict[bytes, int] = {}

    def get(self, key: bytes) -> CustomerState | None:
        try:
            return self._states[key]
        except KeyError:
            raw = self._store.get(key)
            state = None if raw is None else CustomerState.model_validate_json(raw)
            self._states[key] = state
            return state

    def put(self, key: bytes, partition: int, state: CustomerState) -> None:
        self._states[key] = state
        self._changed.add(key)
        self._partitions[key] = partition

    def write_into(self, effects: Effects) -> None:
        for key in self._changed:
            state = self._states[key]
            if state is not None:
                effects.states[key] = (self._partitions[key], state.model_dump_json().encode())


def record_of(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes,
    headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None,
) -> Record:
    """A `Record`, whatever shape the Kafka client gave the headers in."""
    items = () if headers is None else headers.items() if isinstance(headers, Mapping) else headers
    return Record(topic, partition, offset, key, value, tuple(items))
