"""apply_usage: each batch counts once, whatever the redelivery."""

from __future__ import annotations

from tables.billing import Source
from tables.dedupe import MAX_ABOVE, MAX_INCARNATIONS
from tests.tables.factories import BASE_TIME, BASIC, DAY, Feed, event, subscription

PERIOD = (BASE_TIME, BASE_TIME + 30 * DAY)


def active_feed() -> Feed:
    feed = Feed()
    feed.apply(
        event(
            "customer.subscription.created",
            subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
        )
    )
    return feed


def test_batch_adds_units_and_publishes_usage_reason() -> None:
    feed = active_feed()
    out = feed.usage("edge-1:1", 30, now=BASE_TIME + 5)
    assert out.update is not None
    assert (out.update.used, out.update.remaining, out.update.version) == (30, 970, 2)
    assert (out.update.reason.kind, out.update.reason.id) == ("usage", "edge-1:1")


def test_same_batch_id_counts_once() -> None:
    feed = active_feed()
    feed.usage("edge-1:1", 30, now=BASE_TIME + 5)
    feed.usage("edge-1:2", 30, now=BASE_TIME + 5)
    again = feed.usage("edge-1:1", 30, now=BASE_TIME + 6)
    assert again.duplicate
    assert (again.state, again.update) == (None, None)
    feed.usage("edge-2:1", 1, now=BASE_TIME + 6)
    assert feed.quota().used == 61


def test_out_of_order_batches_of_a_node_each_count_once() -> None:
    feed = active_feed()
    for seq in (3, 1, 2, 3, 1, 5, 4):
        feed.usage(f"edge-1:{seq}", 10, now=BASE_TIME + 5)
    assert feed.quota().used == 50


def test_ids_without_sequence_use_the_id_window() -> None:
    feed = active_feed()
    feed.usage("b-x", 10, now=BASE_TIME + 5)
    assert feed.usage("b-x", 10, now=BASE_TIME + 6).duplicate
    assert feed.quota().used == 10


def test_reprocessed_offset_reemits_current_quota() -> None:
    feed = active_feed()
    feed.usage("edge-1:1", 10, now=BASE_TIME + 5, source=Source(2, 7))
    out = feed.usage("edge-1:2", 10, now=BASE_TIME + 5, source=Source(2, 7))
    assert out.duplicate
    assert out.update == feed.quota()
    assert feed.quota().used == 10


def test_usage_before_any_billing_event_creates_a_blocked_state() -> None:
    feed = Feed()
    out = feed.usage("edge-1:1", 3, now=BASE_TIME)
    assert out.update is not None
    assert (out.update.status, out.update.used, out.update.limit) == ("blocked", 3, 0)


def test_marks_of_idle_nodes_are_dropped_after_the_window() -> None:
    feed = active_feed()
    for node in range(20):
        feed.usage(f"edge-{node}:1", 1, now=BASE_TIME + 5)
    later = BASE_TIME + 5 * DAY
    feed.usage("edge-new:1", 1, now=later)
    assert feed.state is not None
    assert set(feed.state.usage_marks) == {"edge-new"}
    assert feed.quota().used == 21


INC_OLD = "00000000000000aa"
INC_NEW = "00000000000000bb"
INC_FORGED = "00000000000000ff"
HUGE = 10**18 - 1


def test_a_reset_spool_counts_from_seq_one_again_and_says_so() -> None:
    feed = active_feed()
    for seq in range(1, 6):
        out = feed.usage(f"edge-1:{INC_OLD}:{seq}", 10, now=BASE_TIME + seq, key_id="k1")
        assert not out.duplicate
        assert not out.spool_reset
    # The spool was lost: the node starts over at 1 under a new incarnation.
    first = feed.usage(f"edge-1:{INC_NEW}:1", 7, now=BASE_TIME + 10, key_id="k1")
    assert not first.duplicate
    assert first.spool_reset
    second = feed.usage(f"edge-1:{INC_NEW}:2", 3, now=BASE_TIME + 11, key_id="k1")
    assert not second.spool_reset  # counted once per customer, when it opens
    assert feed.usage(f"edge-1:{INC_NEW}:1", 7, now=BASE_TIME + 12, key_id="k1").duplicate
    assert feed.usage(f"edge-1:{INC_OLD}:5", 10, now=BASE_TIME + 12, key_id="k1").duplicate
    assert feed.quota().used == 60


def test_a_forged_huge_sequence_under_another_incarnation_blocks_nothing() -> None:
    feed = active_feed()
    feed.usage(f"edge-1:{INC_OLD}:1", 1, now=BASE_TIME + 1, key_id="k1")
    # MAX_ABOVE + 1 forged batches would fold a shared mark past every genuine seq.
    for n in range(MAX_ABOVE + 1):
        feed.usage(f"edge-1:{INC_FORGED}:{HUGE - n}", 1, now=BASE_TIME + 2, key_id="k1")
    for seq in range(2, 12):
        out = feed.usage(f"edge-1:{INC_OLD}:{seq}", 10, now=BASE_TIME + 3, key_id="k1")
        assert not out.duplicate, seq
    assert feed.quota().used == 1 + (MAX_ABOVE + 1) + 100


def test_the_same_node_id_under_another_key_has_its_own_marks() -> None:
    feed = active_feed()
    feed.usage(f"edge-1:{INC_OLD}:1", 5, now=BASE_TIME + 1, key_id="k1")
    # Another key's holder re-uses the node id and incarnation: not a duplicate of k1's
    # batch, and k1's marks are untouched by anything it sends.
    for n in range(MAX_ABOVE + 1):
        feed.usage(f"edge-1:{INC_OLD}:{HUGE - n}", 1, now=BASE_TIME + 2, key_id="k2")
    assert not feed.usage(f"edge-1:{INC_OLD}:2", 5, now=BASE_TIME + 3, key_id="k1").duplicate
    assert feed.usage(f"edge-1:{INC_OLD}:1", 5, now=BASE_TIME + 3, key_id="k1").duplicate
    assert feed.quota().used == 10 + MAX_ABOVE + 1


def test_legacy_ids_keep_their_per_node_mark_after_the_upgrade() -> None:
    feed = active_feed()
    feed.usage("edge-1:1", 10, now=BASE_TIME + 1)
    feed.usage("edge-1:2", 10, now=BASE_TIME + 1, key_id="k1")  # a new ingress, same mark
    assert feed.usage("edge-1:1", 10, now=BASE_TIME + 2, key_id="k1").duplicate
    # The edge's first batch under an incarnation continues its sequence: not a reset.
    out = feed.usage(f"edge-1:{INC_NEW}:3", 10, now=BASE_TIME + 3, key_id="k1")
    assert not out.duplicate
    assert not out.spool_reset
    assert feed.quota().used == 30


def test_incarnations_past_the_bound_forget_the_least_recent() -> None:
    feed = active_feed()
    incs = [f"{n:016x}" for n in range(MAX_INCARNATIONS + 1)]
    for n, inc in enumerate(incs):
        feed.usage(f"edge-1:{inc}:1", 1, now=BASE_TIME + n, key_id="k1")
    assert feed.state is not None
    kept = {k.rpartition("|")[2] for k in feed.state.usage_marks}
    assert kept == set(incs[1:])
    # The forgotten incarnation's batch, if it came again, would count twice (documented).
    assert not feed.usage(f"edge-1:{incs[0]}:1", 1, now=BASE_TIME + 9, key_id="k1").duplicate
