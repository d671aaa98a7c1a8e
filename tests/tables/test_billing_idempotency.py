"""Reprocessing, Stripe retries and Stripe's duplicate Events change nothing."""

from __future__ import annotations

from tables.billing import CustomerState, Source, reevaluate
from tables.dedupe import ID_WINDOW, MAX_IDS
from tables.policy import QuotaPolicy, grace_deadline
from tests.tables.factories import (
    BASE_TIME,
    BASIC,
    DAY,
    PRO,
    TOPUP,
    UNKNOWN,
    Feed,
    customer,
    event,
    invoice,
    make_tenant,
    subscription,
)

PERIOD = (BASE_TIME, BASE_TIME + 30 * DAY)


def sub(status: str, qty: int = 1) -> dict[str, object]:
    return subscription("sub_1", "cus_1", status, [(BASIC, qty)], period=PERIOD)


def test_source_offset_at_or_below_recorded_is_duplicate_and_reemits_current_quota() -> None:
    feed = Feed()
    first = event("customer.subscription.created", sub("active"))
    feed.apply(first, source=Source(3, 10))
    feed.apply(
        event("customer.subscription.updated", sub("active", 2), created=BASE_TIME + 1),
        source=Source(3, 11),
    )
    current = feed.quota()
    for offset in (10, 11):
        out = feed.apply(first, source=Source(3, offset))
        assert out.duplicate
        assert out.state is None
        assert out.update == current  # same version: the edge ignores it if it has it
    assert feed.quota() == current


def test_offsets_are_tracked_per_partition() -> None:
    feed = Feed()
    feed.apply(event("customer.subscription.created", sub("active")), source=Source(0, 100))
    out = feed.apply(
        event("customer.subscription.updated", sub("active", 2), created=BASE_TIME + 1),
        source=Source(1, 5),
    )
    assert not out.duplicate
    assert feed.quota().limit == 2000


def test_same_event_id_at_new_offset_is_duplicate_without_update() -> None:
    feed = Feed()
    ev = event("customer.subscription.created", sub("active"))
    feed.apply(ev)
    before = feed.state
    out = feed.apply(ev)
    assert out.duplicate
    assert (out.state, out.update) == (None, None)
    assert feed.state == before


def test_stripes_second_event_for_the_same_change_is_duplicate() -> None:
    feed = Feed()
    obj = sub("past_due")
    feed.apply(event("customer.subscription.updated", obj, created=BASE_TIME))
    twin = event("customer.subscription.updated", obj, created=BASE_TIME)
    out = feed.apply(twin)
    assert out.duplicate
    assert out.update is None
    assert out.state is not None
    assert twin["id"] in out.state.event_ids


def test_identical_payload_after_a_different_one_is_a_real_change_back() -> None:
    feed = Feed()
    active = sub("active")
    feed.apply(event("customer.subscription.updated", active, created=BASE_TIME))
    feed.apply(event("customer.subscription.updated", sub("past_due"), created=BASE_TIME + 1))
    out = feed.apply(event("customer.subscription.updated", active, created=BASE_TIME + 2))
    assert not out.duplicate
    assert feed.quota().status == "active"


def test_version_increments_by_one_only_when_quota_changes() -> None:
    feed = Feed()
    feed.apply(event("customer.created", customer("cus_1")))
    feed.apply(event("customer.subscription.created", sub("trialing"), created=BASE_TIME + 1))
    feed.apply(
        event("customer.updated", customer("cus_1", metadata={"x": "1"}), created=BASE_TIME + 2)
    )
    feed.apply(event("customer.subscription.updated", sub("active"), created=BASE_TIME + 3))
    feed.apply(event("customer.subscription.updated", sub("active", 4), created=BASE_TIME + 4))
    assert [u.version for u in feed.updates] == [1, 2, 3]
    assert [u.limit for u in feed.updates] == [0, 1000, 4000]


def test_replayed_history_changes_nothing() -> None:
    feed = Feed()
    history = [
        event("customer.created", customer("cus_1", metadata={"rating_id": "u-1"})),
        event("customer.subscription.created", sub("active"), created=BASE_TIME + 1),
        event(
            "invoice.paid",
            invoice(
                "in_t", "cus_1", subscription_id=None, lines=[(TOPUP, 1)], paid_at=BASE_TIME + 2
            ),
            created=BASE_TIME + 2,
        ),
        event("customer.subscription.updated", sub("past_due", 2), created=BASE_TIME + 3),
    ]
    for ev in history:
        feed.apply(ev)
    settled = feed.state
    assert settled is not None
    for ev in history:  # an operator replay: the same events at new offsets
        out = feed.apply(ev, now=BASE_TIME + 10)
        assert out.duplicate
        assert out.update is None
    assert feed.state is not None
    assert feed.state.last == settled.last


def test_event_ids_are_bounded_and_windowed() -> None:
    feed = Feed()
    feed.apply(event("customer.subscription.created", sub("active")))
    for n in range(MAX_IDS * 2):
        feed.apply(
            event(
                "customer.updated", customer("cus_1", metadata={"n": str(n)}), created=BASE_TIME + n
            )
        )
    state = feed.state
    assert state is not None
    assert len(state.event_ids) <= MAX_IDS
    late = BASE_TIME + int(ID_WINDOW) + 10 * DAY
    feed.apply(event("customer.updated", customer("cus_1", metadata={"n": "late"}), created=late))
    assert feed.state is not None
    assert all(t >= late - ID_WINDOW for t in feed.state.event_ids.values())


def test_state_round_trips_through_json() -> None:
    feed = Feed()
    feed.apply(event("customer.created", customer("cus_1", metadata={"rating_id": "u-1"})))
    feed.apply(event("customer.subscription.created", sub("past_due", 2), created=BASE_TIME + 1))
    feed.apply(
        event(
            "invoice.paid",
            invoice(
                "in_t", "cus_1", subscription_id=None, lines=[(TOPUP, 1)], paid_at=BASE_TIME + 2
            ),
            created=BASE_TIME + 2,
        )
    )
    feed.usage("edge-1:1", 5, now=BASE_TIME + 3)
    feed.usage("batch-without-seq", 5, now=BASE_TIME + 3)
    state = feed.state
    assert state is not None
    again = CustomerState.model_validate_json(state.model_dump_json())
    assert again == state
    assert again.key == "acme/cus_1"
    # and keeps working after the round trip
    out = feed.apply(event("customer.subscription.created", sub("active")), source=Source(0, 0))
    assert out.duplicate


def test_grace_deadline_and_reevaluate_publish_the_end_of_grace() -> None:
    policy = QuotaPolicy(grace_seconds=DAY)
    feed = Feed(policy=policy)
    feed.apply(event("customer.subscription.updated", sub("past_due"), created=BASE_TIME))
    state = feed.state
    assert state is not None
    deadline = grace_deadline(state, policy)
    assert deadline == BASE_TIME + DAY
    assert reevaluate(state, now=deadline - 1, policy=policy).update is None
    out = reevaluate(state, now=deadline, policy=policy)
    assert out.update is not None
    assert (out.update.status, out.update.version, out.update.reason.kind) == (
        "blocked",
        2,
        "policy",
    )
    assert out.state is not None
    assert out.state.last == out.update


def test_fetched_object_beats_older_snapshots_and_decides_over_its_own_event() -> None:
    feed = Feed()
    feed.apply(
        event("customer.subscription.created", sub("active")),
        fetched=sub("active"),
        now=BASE_TIME + 50,
    )
    # A snapshot created before that fetch (Stripe unreachable for it): ignored.
    feed.apply(event("customer.subscription.updated", sub("past_due"), created=BASE_TIME + 10))
    assert feed.quota().status == "active"
    # Stripe answered: its object decides, whatever the event's own snapshot says.
    upgraded = subscription("sub_1", "cus_1", "active", [(PRO, 1)], period=PERIOD)
    feed.apply(
        event("customer.subscription.updated", upgraded, created=BASE_TIME + 100),
        fetched=sub("active"),
        fetched_at=BASE_TIME + 100,
        now=BASE_TIME + 101,
    )
    assert feed.quota().limit == 1000
    # The next event's fetch sees the upgrade (two seats by then): it applies.
    two = subscription("sub_1", "cus_1", "active", [(PRO, 2)], period=PERIOD)
    feed.apply(
        event("customer.subscription.updated", two, created=BASE_TIME + 200),
        fetched=two,
        fetched_at=BASE_TIME + 200,
        now=BASE_TIME + 201,
    )
    assert feed.quota().limit == 20_000


def test_an_event_dated_in_the_future_cannot_freeze_the_subscription() -> None:
    feed = Feed()
    received = float(BASE_TIME + 10)
    forged_future = event(
        "customer.subscription.updated", sub("active"), created=BASE_TIME + 10 * 365 * DAY
    )
    feed.apply(forged_future, received_at=received, now=received)
    assert feed.quota().status == "active"
    # Stripe unreachable for the next event too: its snapshot, received later, still wins.
    later = event("customer.subscription.updated", sub("past_due"), created=BASE_TIME + 60)
    feed.apply(later, received_at=BASE_TIME + 61, now=BASE_TIME + 61)
    assert feed.quota().status == "grace"


def test_a_redriven_event_takes_effect_after_the_catalog_is_fixed() -> None:
    tenant = make_tenant()
    feed = Feed(tenant)
    unknown = event(
        "customer.subscription.created",
        subscription("sub_9", "cus_1", "active", [(UNKNOWN, 1)], period=PERIOD),
    )
    first = feed.apply(unknown)
    assert [d.reason for d in first.deadletters] == ["unknown_price"]
    assert feed.quota().limit == 0
    # Without the re-drive marker the same event is a duplicate: nothing changes.
    fixed = {**tenant.plans, str(UNKNOWN.lookup_key): tenant.plans[str(BASIC.lookup_key)]}
    feed.tenant = tenant.model_copy(update={"plans": fixed})
    assert feed.apply(unknown).duplicate
    assert feed.quota().limit == 0
    redriven = feed.apply(unknown, redrive=True)
    assert not redriven.duplicate
    assert redriven.deadletters == ()
    assert feed.quota().limit == 1000


def test_terminal_snapshot_wins_a_one_second_tie_and_never_reverts() -> None:
    feed = Feed()
    canceled = event("customer.subscription.deleted", sub("canceled"), created=BASE_TIME + 5)
    feed.apply(canceled)
    for status in ("active", "past_due", "trialing"):
        late = event("customer.subscription.updated", sub(status, 9), created=BASE_TIME + 5)
        feed.apply(late, now=BASE_TIME + 6)
        later = event("customer.subscription.updated", sub(status, 8), created=BASE_TIME + 99)
        feed.apply(later, now=BASE_TIME + 100)
    assert feed.state is not None
    assert feed.state.subscriptions["sub_1"].status == "canceled"
    assert feed.quota().status == "blocked"


def test_snapshot_of_an_older_period_never_replaces_a_newer_one() -> None:
    feed = Feed()
    renewed = subscription(
        "sub_1", "cus_1", "active", [(BASIC, 1)], period=(PERIOD[1], PERIOD[1] + 30 * DAY)
    )
    feed.apply(event("customer.subscription.updated", renewed, created=BASE_TIME + 30 * DAY))
    feed.apply(
        event("customer.subscription.updated", sub("past_due", 2), created=BASE_TIME + 30 * DAY + 5)
    )
    assert feed.quota().status == "active"
    assert feed.quota().period_start == PERIOD[1]


def test_reevaluate_through_the_topic_is_idempotent_by_offset() -> None:
    policy = QuotaPolicy(grace_seconds=DAY)
    feed = Feed(policy=policy)
    feed.apply(event("customer.subscription.updated", sub("past_due"), created=BASE_TIME))
    state = feed.state
    assert state is not None
    tick = Source(0, 50)
    out = reevaluate(state, now=BASE_TIME + 2 * DAY, policy=policy, source=tick)
    assert out.state is not None
    assert out.update is not None
    again = reevaluate(out.state, now=BASE_TIME + 3 * DAY, policy=policy, source=tick)
    assert again.duplicate
    assert again.update == out.update
    quiet = reevaluate(out.state, now=BASE_TIME + 3 * DAY, policy=policy, source=Source(0, 51))
    assert quiet.update is None
    assert quiet.state is not None  # the tick's offset is recorded
