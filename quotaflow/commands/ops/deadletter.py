"""Dead letters: list and show them, and re-drive them to their source topic after a fix.

A dead letter (streams/deadletter.py) is the original record (key, value, headers) plus
`qf-dl-*` headers saying why and where it failed. Re-driving sends the original back:
same key, same value, the original headers without the `qf-dl-*` ones, plus
`qf-redrive` = `partition:offset` of the dead letter, to the partition it came from.

A dead letter is re-driven once: after the broker acknowledged the re-driven record, its
`partition:offset` is written to the compacted topic `<prefix>deadletter.redriven`, and
`redrive` skips what is there (`--force` overrides). A crash between the two writes can
re-drive one record twice, which is harmless: the worker dedupes by event id. A
re-driven record that fails again is a new dead letter, re-drivable after the next fix.

Given an `actor` (the CLI's `cli:user@host`, the console's `console:<token name>`), a
re-drive is audited: the actor is on each marker, and one record per tenant goes to
`<prefix>tenants.audit` (action `redrive-deadletter`, the refs re-driven), like every
tenant change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from quotaflow.commands.ops.exceptions import OpsError
from quotaflow.commands.tenants.audit import audit_record
from quotaflow.envelope import EVENT_ID, EVENT_TYPE, TENANT
from quotaflow.produce import OpsProducer
from quotaflow.settings import KafkaGroup
from quotaflow.tenants.config import audit_topic
from quotaflow.topicread import Position, TopicReader, Tracker, tenant_partition
from quotaflow.topics import ensure_topics
from streams.deadletter import (
    DETAIL,
    FAILED_AT,
    REASON,
    REDRIVE,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
)

DL_PREFIX = "qf-dl-"


def redriven_topic(settings: KafkaGroup) -> str:
    return settings.topics.deadletter_redriven


@dataclass(frozen=True)
class DeadLetter:
    """One record of the `deadletter` topic, with its facts decoded."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def _h(self, name: str) -> str | None:
        for key, value in reversed(self.headers):
            if key == name:
                return value.decode(errors="replace")
        return None

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def tenant(self) -> str | None:
        found = self._h(TENANT)
        return found if found is not None else (self.key or b"").decode(errors="replace")

    @property
    def reason(self) -> str:
        return self._h(REASON) or "-"

    @property
    def source_topic(self) -> str | None:
        return self._h(SOURCE_TOPIC)

    @property
    def source_partition(self) -> int | None:
        found = self._h(SOURCE_PARTITION)
        return int(found) if found is not None and found.isdigit() else None

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers the record had before it failed."""
        return [(k, v) for k, v in self.headers if not k.startswith(DL_PREFIX)]

    def summary(self) -> dict[str, Any]:
        failed_at = self._h(FAILED_AT)
        return {
            "ref": self.ref,
            "tenant": self.tenant,
            "reason": self.reason,
            "detail": (self._h(DETAIL) or "")[:200],
            "source": f"{self.source_topic}@{self._h(SOURCE_PARTITION)}:{self._h(SOURCE_OFFSET)}",
            "event_id": self._h(EVENT_ID),
            "event_type": self._h(EVENT_TYPE),
            "failed_at": float(failed_at) if failed_at else None,
        }

    def full(self) -> dict[str, Any]:
        """Everything, the body as JSON when it is JSON (it is the tenant's data: ops only)."""
        body: Any
        try:
            body = orjson.loads(self.value) if self.value is not None else None
        except orjson.JSONDecodeError:
            body = (self.value or b"").decode(errors="replace")
        return {
            **self.summary(),
            "detail": self._h(DETAIL),
            "key": None if self.key is None else self.key.decode(errors="replace"),
            "headers": {k: v.decode(errors="replace") for k, v in self.headers},
            "body": body,
        }


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command acts on."""

    tenant: str | None = None
    reason: str | None = None
    refs: frozenset[str] | None = None  # "partition:offset"

    def matches(self, letter: DeadLetter) -> bool:
        if self.tenant is not None and letter.tenant != self.tenant:
            return False
        if self.reason is not None and letter.reason != self.reason:
            return False
        return self.refs is None or letter.ref in self.refs


async def read_letters(
    settings: KafkaGroup,
    selection: Selection,
    *,
    start: Position | None = None,
    progress: Tracker | None = None,
) -> list[DeadLetter]:
    """The selected dead letters (a tenant's partition only when a tenant is given)."""
    out: list[DeadLetter] = []
    async with TopicReader(settings, settings.topics.deadletter) as reader:
        partitions = await reader.partitions()
        if selection.refs is not None:
            partitions = sorted({int(r.split(":")[0]) for r in selection.refs} & set(partitions))
        elif selection.tenant is not None:
            partitions = [tenant_partition(selection.tenant, len(partitions))]
        spans = await reader.spans(partitions, start or Position(edge="beginning"))
        async for record in reader.records(spans, progress):
            letter = DeadLetter(
                record.partition,
                record.offset,
                record.key,
                record.value,
                tuple(record.headers or ()),
            )
            if selection.matches(letter):
                out.append(letter)
    return out


async def redriven_refs(settings: KafkaGroup, *, create: bool = False) -> set[str]:
    """`partition:offset` of every dead letter already re-driven (none if the topic that
    records them does not exist yet; `create` makes it, for a re-drive)."""
    if create:
        await ensure_topics(settings)
    refs: set[str] = set()
    async with TopicReader(settings, redriven_topic(settings)) as reader:
        try:
            partitions = await reader.partitions()
        except OpsError:
            return refs
        spans = await reader.spans(partitions, Position(edge="beginning"))
        async for record in reader.records(spans):
            if record.key is not None and record.value is not None:
                refs.add(record.key.decode())
    return refs


@dataclass
class RedriveReport:
    selected: int = 0
    redriven: int = 0
    already: int = 0
    unroutable: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def redrive(
    settings: KafkaGroup,
    letters: list[DeadLetter],
    *,
    dry_run: bool = False,
    force: bool = False,
    rate: float | None = None,
    progress: Tracker | None = None,
    actor: str | None = None,
) -> RedriveReport:
    """Sends each letter's original record back to its source topic, once; audited when
    an `actor` is given."""
    report = RedriveReport(selected=len(letters), dry_run=dry_run)
    done = await redriven_refs(settings, create=True)
    if force:
        done = set()
    marker_topic = redriven_topic(settings)
    if progress is not None:
        progress.add_total(len(letters))
    sent: dict[str, list[str]] = {}
    async with OpsProducer(settings, rate=rate) as producer:
        for letter in letters:
            if progress is not None:
                progress.advance(1)
            if letter.ref in done:
                report.already += 1
                continue
            if letter.source_topic is None:
                report.unroutable += 1
                continue
            if dry_run:
                report.redriven += 1
                continue
            await producer.send(
                letter.source_topic,
                letter.value,
                key=letter.key,
                headers=[*letter.original_headers(), (REDRIVE, letter.ref.encode())],
                partition=letter.source_partition,
            )
            # The marker only after the re-driven record is acknowledged.
            await producer.flush()
            await producer.send(
                marker_topic,
                orjson.dumps(
                    {"at": time.time(), "source": letter.source_topic}
                    | ({} if actor is None else {"actor": actor})
                ),
                key=letter.ref.encode(),
                headers=[],
            )
            report.redriven += 1
            sent.setdefault(letter.tenant or "", []).append(letter.ref)
        if actor is not None:
            for tenant_id, refs in sorted(sent.items()):
                await producer.send(
                    audit_topic(settings),
                    audit_record("redrive-deadletter", tenant_id, actor, None, None, refs=refs),
                    key=tenant_id.encode(),
                    headers=[],
                )
        await producer.flush()
    return report
