"""The edge's usage spool: every sealed usage batch is on local disk until the core has it.

Why write every batch (not only when the ingress is away): a restart, planned or not,
must not lose usage that was counted and drained from the cache. One small file per
second per node costs nothing next to that.

Layout of the spool directory:
- `incarnation`: `{"incarnation": "<16 hex>", "first_seq": n}`, written (durably) when the
  spool is created, before any batch. The incarnation is 64 random bits: batch ids are
  `<node>:<incarnation>:<seq>`, so a spool that starts over (a container restarted without
  its volume, a replaced disk) is a new incarnation whose seq 1 is never mistaken for the
  old spool's seq 1. `first_seq` is 1 for a new spool; a spool written before incarnations
  existed (it has `next_seq` or batches but no `incarnation`) gets one whose `first_seq`
  is its `next_seq`, and its older batches keep their legacy `<node>:<seq>` ids (the core
  may already hold them under those ids; re-sent under a new id they would count twice).
- `next_seq`: the next batch sequence number. It is written *before* the batch that uses
  the current one, so a crash can leave a gap in the sequence (harmless: the usage
  agent tracks applied sequence numbers per node, gaps included) but never reuse a
  number (which would make the core drop a batch as a duplicate).
- `batch-<seq, 20 digits>.json`: one sealed batch, `{"seq", "items": [[tenant, customer,
  units], ...]}`, an item of a named metered feature `[tenant, customer, units, feature]`
  (a spool written before features only has the first form). Deleted once the ingress
  answered 200.
- `rejected/`: batches the ingress refused as malformed (never expected; kept for an
  operator rather than silently dropped).

Every file is written to a temporary name, fsynced and renamed, then the directory is
fsynced: a file is either whole or absent. Batches go out strictly in sequence order
(the head first), which the core's per-node marks rely on.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tables.dedupe import INCARNATION_HEX, format_batch_id

__all__ = ["SpooledBatch", "UsageSpool", "new_incarnation"]

from edge.cache import UsageKey


@dataclass(slots=True)
class SpooledBatch:
    """One sealed batch. `attempted` once it was sent at least once (then it never changes)."""

    seq: int
    items: dict[UsageKey, int]
    attempted: bool = False
    units: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.units = sum(self.items.values())


def _key(row: list[object]) -> UsageKey:
    tenant, customer = str(row[0]), str(row[1])
    return (tenant, customer) if len(row) < 4 else (tenant, customer, str(row[3]))


def new_incarnation() -> str:
    """64 random bits as lowercase hex: unguessable, and never reused by chance."""
    return secrets.token_hex(INCARNATION_HEX // 2)


class UsageSpool:
    """Sealed, unreported batches of one edge node, in order, mirrored on disk."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._batches: OrderedDict[int, SpooledBatch] = OrderedDict()
        self._next_seq = 1
        self._incarnation: str | None = None
        self._first_seq = 1

    # -- lifecycle ------------------------------------------------------------------

    def load(self) -> None:
        """Reads what a previous run left; every loaded batch counts as attempted."""
        self._dir.mkdir(parents=True, exist_ok=True)
        (self._dir / "rejected").mkdir(exist_ok=True)
        for tmp in self._dir.glob("*.tmp"):
            tmp.unlink()
        self._batches.clear()
        stored = self._dir / "next_seq"
        next_seq = int(stored.read_text().strip() or "1") if stored.exists() else 1
        for path in sorted(self._dir.glob("batch-*.json")):
            doc = orjson.loads(path.read_bytes())
            items = {_key(row): int(row[2]) for row in doc["items"]}
            batch = SpooledBatch(int(doc["seq"]), items, attempted=True)
            self._batches[batch.seq] = batch
            next_seq = max(next_seq, batch.seq + 1)
        self._next_seq = next_seq
        self._load_incarnation(fresh=not stored.exists() and not self._batches)

    def _load_incarnation(self, *, fresh: bool) -> None:
        path = self._dir / "incarnation"
        if path.exists():
            # Written whole or not at all (rename): a file that does not parse is not ours
            # to replace, since batches of the incarnation it names may be in the core.
            doc = orjson.loads(path.read_bytes())
            self._incarnation = str(doc["incarnation"])
            self._first_seq = int(doc["first_seq"])
            return
        # A new spool starts at 1; one from before incarnations continues its sequence.
        first_seq = 1 if fresh else self._next_seq
        incarnation = new_incarnation()
        doc = {"incarnation": incarnation, "first_seq": first_seq}
        self._write(path, orjson.dumps(doc))
        self._incarnation, self._first_seq = incarnation, first_seq

    # -- reads ----------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def incarnation(self) -> str:
        """This spool's incarnation (after `load()`)."""
        if self._incarnation is None:
            raise RuntimeError("the spool is not loaded")
        return self._incarnation

    def batch_id(self, node_id: str, seq: int) -> str:
        """The id batch `seq` travels under: legacy for batches from before incarnations."""
        if seq < self._first_seq:
            return format_batch_id(node_id, None, seq)
        return format_batch_id(node_id, self.incarnation, seq)

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def units(self) -> int:
        return sum(b.units for b in self._batches.values())

    def head(self) -> SpooledBatch | None:
        return next(iter(self._batches.values()), None)

    def tail(self) -> SpooledBatch | None:
        return next(reversed(self._batches.values()), None)

    # -- writes ---------------------------------------------------------------------

    def seal(self, items: dict[UsageKey, int]) -> SpooledBatch:
        """A new batch with the next sequence number, durable before this returns."""
        seq = self._next_seq
        self._next_seq = seq + 1
        self._write(self._dir / "next_seq", str(self._next_seq).encode())
        batch = SpooledBatch(seq, dict(items))
        self._store(batch)
        self._batches[seq] = batch
        return batch

    def merge_into_tail(self, items: dict[UsageKey, int]) -> SpooledBatch | None:
        """Adds `items` to the newest batch if it was never sent; None if it was.

        Only a batch no one has seen may change: a sent one may already be in Kafka under
        its id, and a changed copy with the same id would be dropped as a duplicate.
        """
        tail = self.tail()
        if tail is None or tail.attempted:
            return None
        merged = dict(tail.items)
        for key, units in items.items():
            merged[key] = merged.get(key, 0) + units
        batch = SpooledBatch(tail.seq, merged)
        self._store(batch)
        self._batches[tail.seq] = batch
        return batch

    def mark_attempted(self, seq: int) -> None:
        self._batches[seq].attempted = True

    def remove(self, seq: int) -> None:
        """The ingress has the batch: forget it."""
        self._batches.pop(seq, None)
        with contextlib.suppress(FileNotFoundError):
            self._path(seq).unlink()

    def drop_tenant(self, seq: int, tenant_id: str) -> int:
        """Removes one tenant's items from a batch the ingress refused for that tenant.

        Safe although the batch was sent: a refused batch published nothing. Returns the
        units dropped; the batch is removed when nothing is left.
        """
        batch = self._batches[seq]
        kept = {k: u for k, u in batch.items.items() if k[0] != tenant_id}
        dropped = batch.units - sum(kept.values())
        if not kept:
            self.remove(seq)
            return dropped
        replaced = SpooledBatch(seq, kept, attempted=True)
        self._store(replaced)
        self._batches[seq] = replaced
        return dropped

    def reject(self, seq: int) -> None:
        """Moves a batch the ingress refused as malformed aside, for an operator."""
        self._batches.pop(seq, None)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self._path(seq), self._dir / "rejected" / self._path(seq).name)

    # -- files ----------------------------------------------------------------------

    def _path(self, seq: int) -> Path:
        return self._dir / f"batch-{seq:020d}.json"

    def _store(self, batch: SpooledBatch) -> None:
        items = [[k[0], k[1], u, *k[2:]] for k, u in batch.items.items()]
        self._write(self._path(batch.seq), orjson.dumps({"seq": batch.seq, "items": items}))

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
