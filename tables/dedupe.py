"""Idempotency guards kept inside a table value: offsets, id windows, fingerprints, marks.

Faust is at-least-once and writes the changelog before it commits offsets, so after a
crash an input is processed again against a state that may already contain its effect.
Each guard below is stored in the same value it protects:

1. Source offset per partition. An input at or below the recorded offset of its
   partition was applied already (the reprocessing-after-crash case).
2. Event ids with their Stripe `created` time, for Stripe's retries and operator
   replays, which arrive at new offsets. Kept for `ID_WINDOW` (4 days: Stripe retries
   for 3) measured against the newest `created` seen, which keeps the state a pure
   function of its inputs; at most `MAX_IDS` per customer (oldest dropped first).
3. The last fingerprint per Stripe object (type + payload hash). Stripe sometimes
   creates two Events for one change: same `data.object.id`, same `type`, same object.
   Only a repeat of the *last* fingerprint applied to that object is a duplicate: an
   identical payload after a different one (active → past_due → active) is a real
   change back and must be applied.
4. Usage marks for edge batch ids, one per (edge key, node, spool incarnation): the
   batch id is `<node>:<incarnation>:<seq>` (`format_batch_id`); the legacy `<node>:<seq>`
   form keeps its per-node mark. Why the incarnation: a spool that was reset (container
   without a volume, replaced disk) starts again at seq 1, and under a per-node mark all
   its batches would be dropped as duplicates of the old spool's. Why the key: a node id
   is only as trustworthy as the key that signed it, so a holder of another edge key
   cannot touch these marks (see `mark_key`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "ID_WINDOW",
    "INCARNATION_HEX",
    "MAX_ABOVE",
    "MAX_IDS",
    "MAX_INCARNATIONS",
    "MAX_MARKS",
    "BatchId",
    "fingerprint",
    "format_batch_id",
    "mark_add",
    "mark_applied",
    "mark_key",
    "marks_to_drop",
    "parse_batch_id",
    "remember",
    "spool_reset",
]

ID_WINDOW = 4 * 24 * 3600.0
MAX_IDS = 256
MAX_ABOVE = 64
# A spool incarnation: 64 random bits, lowercase hex (`secrets.token_hex(8)` at the edge).
INCARNATION_HEX = 16
# Incarnations kept per (key, node) in one customer's marks: the live spool plus a few it
# replaced (a re-send from a replaced spool can still arrive late). Past it the least
# recently applied incarnation's mark is forgotten: a batch of it that arrives *again*
# would count twice. Nothing genuine is ever dropped by the bound.
MAX_INCARNATIONS = 4
# Marks kept per customer in all: past it (after idle marks went), the least recently
# applied ones are forgotten, with the same consequence. Keeps a flood of forged node ids
# from growing a customer's state without limit.
MAX_MARKS = 64

# One match per batch id (the usage agent parses every one): node, incarnation?, seq.
_BATCH_ID = re.compile(
    rf"([A-Za-z0-9._-]{{1,64}})(?::([0-9a-f]{{{INCARNATION_HEX}}}))?:([0-9]{{1,18}})"
)


def remember(ids: Mapping[str, float], key: str, at: float) -> dict[str, float]:
    """A copy of `ids` with `key` at time `at`, pruned to the window and the bound."""
    out = dict(ids)
    out[key] = at
    if len(out) > MAX_IDS // 4:
        newest = max(out.values())
        out = {k: t for k, t in out.items() if t >= newest - ID_WINDOW}
        if len(out) > MAX_IDS:
            keep = sorted(out.items(), key=lambda kv: kv[1])[-MAX_IDS:]
            out = dict(keep)
    return out


def fingerprint(event_type: str, obj: Mapping[str, Any]) -> str:
    """Identifies an object payload for one event type (Stripe's duplicate Events match)."""
    digest = hashlib.blake2b(orjson.dumps(obj), digest_size=10).hexdigest()
    return f"{event_type}:{digest}"


@dataclass(frozen=True, slots=True)
class BatchId:
    """A parsed edge batch id; `incarnation` is None for the legacy `node:seq` form."""

    node: str
    incarnation: str | None
    seq: int


def format_batch_id(node: str, incarnation: str | None, seq: int) -> str:
    """`<node>:<incarnation>:<seq>`, or the legacy `<node>:<seq>` without an incarnation."""
    return f"{node}:{seq}" if incarnation is None else f"{node}:{incarnation}:{seq}"


def parse_batch_id(batch_id: str) -> BatchId | None:
    """`node:incarnation:seq` or legacy `node:seq` → BatchId; anything else → None."""
    match = _BATCH_ID.fullmatch(batch_id)
    if match is None:
        return None
    node, incarnation, seq = match.groups()
    return BatchId(node, incarnation, int(seq))


def mark_key(batch: BatchId, key_id: str | None) -> str:
    """Where a batch's mark lives in a customer's marks.

    Legacy ids keep the key they always had (the node id), so a batch an edge spooled
    before the upgrade and re-sends after it is still recognised. Others:
    `<key id>|<node>|<incarnation>` — `|` appears in neither a node id nor a key id, and
    a node id signed by another key is another mark (a key holder can only ever touch
    marks of node ids under its own key).
    """
    if batch.incarnation is None:
        return batch.node
    return f"{key_id or ''}|{batch.node}|{batch.incarnation}"


def _scope(key: str) -> str | None:
    """`<key id>|<node>` of a mark key; None for a legacy (per-node) mark."""
    scope, sep, _ = key.rpartition("|")
    return scope if sep else None


def spool_reset(keys: Mapping[str, object], added: str) -> bool:
    """Is `added` (a mark key not in `keys`) a new incarnation of a node that had another?

    That is a node whose spool was reset (or someone signing for it under another
    incarnation): worth an alert, though nothing is lost by the marks themselves.
    """
    scope = _scope(added)
    return scope is not None and any(k != added and _scope(k) == scope for k in keys)


def marks_to_drop(ats: Mapping[str, float], added: str, now: float, idle_after: int) -> set[str]:
    """Marks (key → last applied at) to forget so that the bounds hold again after the
    mark `added` was opened (they held before it, so only its scope and the total can be
    over).

    Per (key, node) at most `MAX_INCARNATIONS`, least recently applied out first; then,
    past `idle_after` marks in all, the idle ones (nothing applied for the id window: a
    retired node); then, past `MAX_MARKS`, the least recently applied. Ties break on the
    key, so the result is a pure function of the marks.
    """
    drop: set[str] = set()
    scope = _scope(added)
    if scope is not None:
        prefix = scope + "|"  # neither ids nor incarnations contain `|`
        same = [k for k in ats if k.startswith(prefix)]
        if len(same) > MAX_INCARNATIONS:
            oldest = sorted(same, key=lambda k: (ats[k], k))
            drop.update(oldest[: len(same) - MAX_INCARNATIONS])
    if len(ats) - len(drop) <= idle_after:
        return drop
    kept = {k: at for k, at in ats.items() if k not in drop}
    idle = {k for k, at in kept.items() if at < now - ID_WINDOW}
    drop |= idle
    kept = {k: at for k, at in kept.items() if k not in idle}
    if len(kept) > MAX_MARKS:
        oldest = sorted(kept, key=lambda k: (kept[k], k))
        drop.update(oldest[: len(kept) - MAX_MARKS])
    return drop


def mark_applied(low: int, above: tuple[int, ...], seq: int) -> bool:
    """Was batch `seq` of a node already applied, given its mark?"""
    return seq <= low or seq in above


def mark_add(low: int, above: tuple[int, ...], seq: int) -> tuple[int, tuple[int, ...]]:
    """The mark after applying `seq`: contiguous runs fold into `low`, gaps stay in `above`.

    `above` is bounded by `MAX_ABOVE`: past it the smallest entries fold into `low`,
    so a batch older than 64 later ones of the same node would be taken as applied.
    Edge nodes send a customer's batches in order, which never gets near that.
    """
    pending = sorted({*above, seq})
    while pending and pending[0] == low + 1:
        low = pending.pop(0)
    while len(pending) > MAX_ABOVE:
        low = pending.pop(0)
    return low, tuple(pending)
