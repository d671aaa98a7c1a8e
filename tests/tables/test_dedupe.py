"""The guards kept in table values: id windows, fingerprints, usage marks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tables.dedupe import (
    ID_WINDOW,
    MAX_ABOVE,
    MAX_IDS,
    MAX_INCARNATIONS,
    MAX_MARKS,
    BatchId,
    fingerprint,
    format_batch_id,
    mark_add,
    mark_applied,
    mark_key,
    marks_to_drop,
    parse_batch_id,
    remember,
    spool_reset,
)

INC_A = "0123456789abcdef"
INC_B = "fedcba9876543210"


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


def test_parse_batch_id_reads_both_forms_and_nothing_else() -> None:
    assert parse_batch_id(f"edge-eu-1:{INC_A}:42") == BatchId("edge-eu-1", INC_A, 42)
    assert parse_batch_id("edge-eu-1:42") == BatchId("edge-eu-1", None, 42)  # legacy
    assert parse_batch_id("host:boot:7") is None  # not an incarnation
    assert parse_batch_id(f"edge:{INC_A.upper()}:7") is None  # lowercase hex only
    assert parse_batch_id(f"edge:{INC_A}0:7") is None  # 16 hex digits exactly
    assert parse_batch_id(f"a:b:{INC_A}:7") is None
    assert parse_batch_id("no-seq") is None
    assert parse_batch_id(":7") is None
    assert parse_batch_id("node:-1") is None
    assert parse_batch_id("node:\uff11") is None  # a unicode digit is not a sequence number
    assert parse_batch_id("node:" + "9" * 19) is None


@given(
    st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    st.one_of(st.none(), st.from_regex(r"[0-9a-f]{16}", fullmatch=True)),
    st.integers(min_value=0, max_value=10**18 - 1),
)
def test_format_and_parse_round_trip(node: str, incarnation: str | None, seq: int) -> None:
    assert parse_batch_id(format_batch_id(node, incarnation, seq)) == BatchId(
        node, incarnation, seq
    )


def test_mark_keys_scope_by_key_node_and_incarnation_and_keep_legacy_keys() -> None:
    a = BatchId("n1", INC_A, 1)
    assert mark_key(a, "k1") == f"k1|n1|{INC_A}"
    assert mark_key(a, "k1") != mark_key(a, "k2")  # another key: another mark
    assert mark_key(a, "k1") != mark_key(BatchId("n1", INC_B, 1), "k1")
    # Legacy ids keep the per-node key that states already hold.
    assert mark_key(BatchId("n1", None, 1), "k1") == "n1"


def test_a_new_incarnation_of_a_node_under_the_same_key_is_a_spool_reset() -> None:
    marks = {f"k1|n1|{INC_A}": 1.0, "n1": 1.0, f"k1|n2|{INC_A}": 1.0}
    assert spool_reset(marks, f"k1|n1|{INC_B}")
    assert not spool_reset(marks, f"k2|n1|{INC_B}")  # a rotated key is not a reset
    assert not spool_reset(marks, f"k1|n3|{INC_B}")  # a new node
    assert not spool_reset({"n1": 1.0}, f"k1|n1|{INC_B}")  # the upgrade from legacy ids


def _inc(n: int) -> str:
    return f"{n:016x}"


def test_incarnations_per_node_are_bounded_least_recently_applied_out_first() -> None:
    ats = {f"k1|n1|{_inc(n)}": float(n) for n in range(MAX_INCARNATIONS + 1)}
    ats["k1|n2|" + _inc(0)] = 0.0  # another node's mark is not counted against n1
    ats["k1|n1"] = 0.0  # nor a node whose id is a prefix's
    added = f"k1|n1|{_inc(MAX_INCARNATIONS)}"
    assert marks_to_drop(ats, added, now=10.0, idle_after=16) == {f"k1|n1|{_inc(0)}"}
    assert marks_to_drop(ats, "k1|n2|" + _inc(0), now=10.0, idle_after=16) == set()


def test_marks_in_all_are_bounded() -> None:
    ats = {f"k1|n{n}|{INC_A}": 1000.0 + n for n in range(MAX_MARKS + 1)}
    added = f"k1|n{MAX_MARKS}|{INC_A}"
    drop = marks_to_drop(ats, added, now=1000.0 + MAX_MARKS, idle_after=16)
    assert drop == {f"k1|n0|{INC_A}"}


def test_idle_marks_go_once_there_are_many() -> None:
    added = f"k|n|{INC_A}"
    ats = {f"n{n}": 0.0 for n in range(17)} | {added: ID_WINDOW + 10}
    idle = {f"n{n}" for n in range(17)}
    assert marks_to_drop(ats, added, now=ID_WINDOW + 10, idle_after=16) == idle
    assert marks_to_drop(ats, added, now=ID_WINDOW + 10, idle_after=18) == set()


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
