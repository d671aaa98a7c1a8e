"""apply_usage: each batch counts once, whatever the redelivery."""

from __future__ import annotations

from tables.billing import Source
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
