"""The guards kept in table values: id windows, fingerprints, usage marks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tables.dedupe import (
    ID_WINDOW,
    MAX_ABOVE,
    MAX_IDS,
    fingerprint,
    mark_add,
    mark_applied,
    parse_batch_id,
    remember,
)


def test_remember_keeps_ids_inside_the_window() -> None:
    ids: dict[str, float] = {}
    for n in range(100):
        ids = remember(ids, f"evt_{n}", float(n))
    assert len(ids) == 100
    ids = remember(ids, "evt_late", 99 + ID_WINDOW + 1)
    assert set(ids) == {"evt_late"}


def test_remember_drops_oldest_past_the_bound() -> None:
    ids: dict[str, float] = {}
    for n in range(MAX_IDS + 50):
        ids = remember(ids, f"evt_{n}", float(n))
    assert len(ids) <= MAX_IDS
    assert f"evt_{MAX_IDS + 49}" in ids
    assert "evt_0" not in ids


def test_remember_does_not_mutate_its_input() -> None:
    ids = {"a": 1.0}
    remember(ids, "b", 2.0)
    assert ids == {"a": 1.0}


def test_fingerprint_depends_on_type_and_payload() -> None:
    obj = {"id": "sub_1", "status": "active"}
    assert fingerprint("customer.subscription.updated", obj) == fingerprint(
        "customer.subscription.updated", dict(obj)
    )
    assert fingerprint("customer.subscription.updated", obj) != fingerprint(
        "customer.subscription.created", obj
    )
    assert fingerprint("x", obj) != fingerprint("x", {"id": "sub_1", "status": "past_due"})


def test_parse_batch_id() -> None:
    assert parse_batch_id("edge-eu-1:42") == ("edge-eu-1", 42)
    assert parse_batch_id("host:boot:7") == ("host:boot", 7)
    assert parse_batch_id("no-seq") is None
    assert parse_batch_id(":7") is None
    assert parse_batch_id("node:-1") is None


@given(st.lists(st.integers(min_value=1, max_value=200), max_size=300))
def test_usage_mark_applies_each_seq_once_in_any_order(seqs: list[int]) -> None:
    low, above = 0, tuple[int, ...]()
    applied: list[int] = []
    for seq in seqs:
        if not mark_applied(low, above, seq):
            applied.append(seq)
            low, above = mark_add(low, above, seq)
        assert mark_applied(low, above, seq)
        assert len(above) <= MAX_ABOVE
    assert len(applied) == len(set(applied))


@given(st.permutations(list(range(1, 60))))
def test_usage_mark_folds_contiguous_runs(order: list[int]) -> None:
    low, above = 0, tuple[int, ...]()
    for seq in order:
        low, above = mark_add(low, above, seq)
    assert (low, above) == (59, ())
