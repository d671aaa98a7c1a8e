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
4. Usage marks per edge node for batch ids `node:seq` (see `usage_applied`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "ID_WINDOW",
    "MAX_ABOVE",
    "MAX_IDS",
    "fingerprint",
    "mark_add",
    "mark_applied",
    "parse_batch_id",
    "remember",
]

ID_WINDOW = 4 * 24 * 3600.0
MAX_IDS = 256
MAX_ABOVE = 64


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


def parse_batch_id(batch_id: str) -> tuple[str, int] | None:
    """`node:seq` → (node, seq) when seq is a non-negative integer; else None."""
    node, sep, seq = batch_id.rpartition(":")
    if not sep or not node or not seq.isdigit():
        return None
    return node, int(seq)


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
