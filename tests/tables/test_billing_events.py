"""apply_event per event type and subscription status, in current and legacy shapes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tables.billing import HANDLED_TYPES, FetchTarget, customer_of, fetch_target
from tables.tenant import PlanEntry
from tests.tables.factories import (
    BASE_TIME,
    BASIC,
    DAY,
    LEGACY,
    PRO,
    TOPUP,
    UNKNOWN,
    UNLIMITED,
    Feed,
    Price,
    Shape,
    checkout_session,
    customer,
    deleted_customer,
    entitlement_summary,
    event,
    invoice,
    make_tenant,
    subscription,
)

PERIOD = (BASE_TIME, BASE_TIME + 30 * DAY)
NEXT_PERIOD = (BASE_TIME + 30 * DAY, BASE_TIME + 60 * DAY)
SHAPES: tuple[Shape, ...] = ("basil", "legacy")


def sub_event(
    status: str,
    items: Sequence[tuple[Price, int]] | None = None,
    *,
    event_type: str = "customer.subscription.updated",
    period: tuple[int, int] = PERIOD,
    created: int = BASE_TIME,
    shape: Shape = "basil",
    sub_id: str = "sub_1",
) -> dict[str, object]:
    obj = subscription(
        sub_id,
        "cus_1",
        status,
        items if items is not None else [(BASIC, 1)],
        period=period,
        shape=shape,
    )
    return event(event_type, obj, created=created, shape=shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_active_subscription_grants_quota_times_quantity(shape: Shape) -> None:
    feed = Feed()
    items = [(LEGACY if shape == "legacy" else BASIC, 3)]
    out = feed.apply(
        sub_event("active", items, event_type="customer.subscription.created", shape=shape)
    )
    assert out.update is not None
    expected = 600 if shape == "legacy" else 3000
    assert (out.update.limit, out.update.remaining, out.update.status) == (
        expected,
        expected,
        "active",
    )
    assert (out.update.period_start, out.update.period_end) == PERIOD
    assert out.update.version == 1
    assert out.update.reason.kind == "stripe_event"
    assert out.update.reason.type == "customer.subscription.created"


@pytest.mark.parametrize(
    ("status", "quota_status"),
    [
        ("active", "active"),
        ("trialing", "active"),
        ("past_due", "grace"),
        ("unpaid", "blocked"),
        ("canceled", "blocked"),
        ("incomplete", "blocked"),
        ("incomplete_expired", "blocked"),
        ("paused", "blocked"),
    ],
)
def test_subscription_status_maps_to_quota_status(status: str, quota_status: str) -> None:
    feed = Feed()
    feed.apply(sub_event(status))
    assert feed.quota().status == quota_status
    assert feed.quota().limit == (1000 if quota_status != "blocked" else 0)


def test_past_due_turns_blocked_after_grace() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    feed.apply(sub_event("past_due", created=BASE_TIME + 100), now=BASE_TIME + 101)
    assert feed.quota().status == "grace"
    # A later event inside the grace keeps it; one after the grace sees it blocked.
    feed.apply(event("customer.updated", customer("cus_1"), created=BASE_TIME + 200))
    assert feed.quota().status == "grace"
    late = BASE_TIME + 100 + 3 * DAY + 1
    touched = customer("cus_1", metadata={"note": "x"})
    feed.apply(event("customer.updated", touched, created=late), now=late)
    assert feed.quota().status == "blocked"
    assert feed.quota().limit == 0


def test_grace_counts_from_first_past_due_snapshot() -> None:
    feed = Feed()
    feed.apply(sub_event("past_due", created=BASE_TIME))
    feed.apply(sub_event("past_due", [(BASIC, 2)], created=BASE_TIME + 2 * DAY))
    state = feed.state
    assert state is not None
    assert state.subscriptions["sub_1"].past_due_since == BASE_TIME


def test_no_subscription_is_blocked_with_limit_zero() -> None:
    out = Feed().apply(event("customer.created", customer("cus_1")))
    assert out.update is not None
    assert (out.update.status, out.update.limit, out.update.remaining) == ("blocked", 0, 0)


def test_unlimited_item_wins() -> None:
    feed = Feed()
    feed.apply(sub_event("active", [(BASIC, 2), (UNLIMITED, 1)]))
    assert feed.quota().limit is None
    assert feed.quota().remaining is None
    assert feed.quota().status == "active"


def test_several_subscriptions_add_up_and_blocked_ones_do_not_count() -> None:
    feed = Feed()
    feed.apply(sub_event("active", [(BASIC, 1)], sub_id="sub_a"))
    feed.apply(sub_event("active", [(PRO, 2)], sub_id="sub_b", created=BASE_TIME + 1))
    assert feed.quota().limit == 21_000
    assert feed.quota().features == ("api", "bulk")
    assert feed.quota().rate_per_second == 10
    feed.apply(sub_event("canceled", [(PRO, 2)], sub_id="sub_b", created=BASE_TIME + 2))
    assert feed.quota().limit == 1000
    assert feed.quota().features == ("api",)


def test_unknown_price_dead_letters_and_other_items_still_count() -> None:
    feed = Feed()
    out = feed.apply(sub_event("active", [(BASIC, 2), (UNKNOWN, 1)]))
    assert [d.reason for d in out.deadletters] == ["unknown_price"]
    assert "mystery" in out.deadletters[0].detail
    assert feed.quota().limit == 2000
    assert feed.quota().status == "active"


def test_new_period_resets_used_and_keeps_it_within_period() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    feed.usage("edge-1:1", 400, now=BASE_TIME + 10)
    feed.apply(sub_event("active", [(BASIC, 2)], created=BASE_TIME + 20))
    assert feed.quota().used == 400
    feed.apply(sub_event("active", period=NEXT_PERIOD, created=BASE_TIME + 30 * DAY))
    assert feed.quota().used == 0
    assert (feed.quota().period_start, feed.quota().period_end) == NEXT_PERIOD


def test_used_at_limit_is_exhausted() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    out = feed.usage("edge-1:1", 1000, now=BASE_TIME + 10)
    assert out.update is not None
    assert (out.update.status, out.update.remaining) == ("exhausted", 0)


@pytest.mark.parametrize("shape", SHAPES)
def test_topup_invoice_adds_units_once_per_invoice(shape: Shape) -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    paid = invoice(
        "in_top",
        "cus_1",
        subscription_id=None,
        lines=[(TOPUP, 2)],
        paid_at=BASE_TIME + 50,
        shape=shape,
    )
    event_type = "invoice.paid" if shape == "basil" else "invoice.payment_succeeded"
    feed.apply(event(event_type, paid, created=BASE_TIME + 50))
    assert feed.quota().limit == 2000
    # Stripe's second Event for the same invoice, with a new id: still once.
    out = feed.apply(event(event_type, paid, created=BASE_TIME + 51))
    assert out.update is None
    assert feed.quota().limit == 2000


def test_topup_of_an_earlier_period_adds_nothing() -> None:
    feed = Feed()
    feed.apply(sub_event("active", period=NEXT_PERIOD, created=BASE_TIME + 30 * DAY))
    old = invoice(
        "in_old", "cus_1", subscription_id=None, lines=[(TOPUP, 1)], paid_at=BASE_TIME + 5
    )
    out = feed.apply(event("invoice.paid", old, created=BASE_TIME + 5), now=BASE_TIME + 31 * DAY)
    assert out.update is None
    assert feed.quota().limit == 1000


def test_topup_delivered_before_its_renewal_counts_in_the_new_period() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    bought = BASE_TIME + 30 * DAY + 100
    top = invoice("in_top", "cus_1", subscription_id=None, lines=[(TOPUP, 1)], paid_at=bought)
    feed.apply(event("invoice.paid", top, created=bought))
    feed.apply(sub_event("active", period=NEXT_PERIOD, created=BASE_TIME + 30 * DAY))
    assert feed.quota().limit == 1500


def test_invoice_events_apply_the_fetched_subscription() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    current = subscription("sub_1", "cus_1", "past_due", [(BASIC, 1)], period=PERIOD)
    failed = invoice("in_2", "cus_1", subscription_id="sub_1", status="open")
    ev = event("invoice.payment_failed", failed, created=BASE_TIME + 10)
    assert fetch_target(ev) == FetchTarget("subscription", "sub_1")
    feed.apply(ev, fetched=current, now=BASE_TIME + 11)
    assert feed.quota().status == "grace"


def test_invoice_event_without_fetch_changes_no_subscription() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    failed = invoice("in_2", "cus_1", subscription_id="sub_1", status="open")
    out = feed.apply(event("invoice.payment_action_required", failed, created=BASE_TIME + 10))
    assert out.update is None
    assert out.state is not None
    assert feed.quota().status == "active"


def test_checkout_completed_applies_fetched_subscription() -> None:
    feed = Feed()
    session = checkout_session("cus_1", "sub_9")
    ev = event("checkout.session.completed", session)
    assert fetch_target(ev) == FetchTarget("subscription", "sub_9")
    current = subscription("sub_9", "cus_1", "active", [(PRO, 1)], period=PERIOD)
    feed.apply(ev, fetched=current)
    assert feed.quota().limit == 10_000


def test_fetched_object_of_another_id_is_ignored() -> None:
    feed = Feed()
    ev = event("checkout.session.completed", checkout_session("cus_1", "sub_9"))
    other = subscription("sub_other", "cus_1", "active", [(PRO, 1)], period=PERIOD)
    feed.apply(ev, fetched=other)
    assert feed.quota().limit == 0


def test_subscription_of_another_customer_is_dead_lettered() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    stranger = subscription("sub_1", "cus_2", "active", [(PRO, 5)], period=PERIOD)
    ev = event(
        "invoice.paid", invoice("in_1", "cus_1", subscription_id="sub_1"), created=BASE_TIME + 5
    )
    out = feed.apply(ev, fetched=stranger)
    assert [d.reason for d in out.deadletters] == ["malformed"]
    assert feed.quota().limit == 1000


def test_customer_alias_becomes_published_customer_id_and_is_kept() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    assert feed.quota().customer_id == "cus_1"
    out = feed.apply(
        event(
            "customer.updated",
            customer("cus_1", metadata={"rating_id": "u-42"}),
            created=BASE_TIME + 5,
        )
    )
    assert out.update is not None
    assert out.update.customer_id == "u-42"
    assert out.update.key == "acme/u-42"
    feed.apply(event("customer.updated", customer("cus_1"), created=BASE_TIME + 6))
    assert feed.quota().customer_id == "u-42"


def test_alias_from_subscription_metadata_fills_a_missing_alias() -> None:
    feed = Feed()
    obj = subscription(
        "sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD, metadata={"rating_id": "u-7"}
    )
    feed.apply(event("customer.subscription.created", obj))
    assert feed.quota().customer_id == "u-7"


def test_alias_from_fetched_customer() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    ev = event("customer.created", customer("cus_1"), created=BASE_TIME + 1)
    assert fetch_target(ev) == FetchTarget("customer", "cus_1")
    feed.apply(ev, fetched=customer("cus_1", metadata={"rating_id": "u-9"}))
    assert feed.quota().customer_id == "u-9"


def test_no_alias_key_keeps_stripe_id() -> None:
    feed = Feed(make_tenant(alias_key=None))
    feed.apply(event("customer.created", customer("cus_1", metadata={"rating_id": "u-42"})))
    assert feed.quota().customer_id == "cus_1"


def test_deleted_customer_is_blocked_and_deletion_never_reverts() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    feed.apply(event("customer.deleted", deleted_customer("cus_1"), created=BASE_TIME + 10))
    assert feed.quota().status == "blocked"
    feed.apply(event("customer.updated", customer("cus_1"), created=BASE_TIME + 20))
    assert feed.quota().status == "blocked"


def test_entitlement_summary_adds_features() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    feed.apply(
        event(
            "entitlements.active_entitlement_summary.updated",
            entitlement_summary("cus_1", ["sso", "audit"]),
            created=BASE_TIME + 5,
        )
    )
    assert feed.quota().features == ("api", "audit", "sso")
    older = entitlement_summary("cus_1", ["old"])
    feed.apply(
        event("entitlements.active_entitlement_summary.updated", older, created=BASE_TIME + 1)
    )
    assert feed.quota().features == ("api", "audit", "sso")


@pytest.mark.parametrize(
    "event_type",
    [
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.trial_will_end",
    ],
)
def test_every_subscription_event_carries_its_snapshot(event_type: str) -> None:
    status = "paused" if event_type.endswith("paused") else "active"
    feed = Feed()
    feed.apply(sub_event(status, event_type=event_type))
    assert feed.quota().status == ("blocked" if status == "paused" else "active")


def test_customer_of_reads_each_handled_type() -> None:
    sub = subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD)
    assert customer_of(event("customer.subscription.updated", sub)) == "cus_1"
    assert customer_of(event("customer.created", customer("cus_1"))) == "cus_1"
    expanded = dict(sub, customer={"id": "cus_1", "object": "customer"})
    assert customer_of(event("customer.subscription.updated", expanded)) == "cus_1"
    assert (
        customer_of(event("invoice.paid", invoice("in_1", "cus_1", subscription_id=None)))
        == "cus_1"
    )
    assert (
        customer_of(event("payment_intent.succeeded", {"id": "pi_1", "customer": "cus_1"})) is None
    )
    assert customer_of({"type": "customer.created"}) is None
    assert "invoice.payment_succeeded" in HANDLED_TYPES


def test_unhandled_type_is_ignored_without_dead_letter() -> None:
    out = Feed().apply(event("payment_intent.succeeded", {"id": "pi_1", "customer": "cus_1"}))
    assert (out.state, out.update, out.deadletters) == (None, None, ())


def test_malformed_events_dead_letter_without_raising() -> None:
    feed = Feed()
    assert Feed().apply({"type": "customer.created"}).deadletters[0].reason == "malformed"
    no_customer = event("customer.subscription.updated", {"id": "sub_1", "status": "active"})
    assert feed.apply(no_customer).deadletters[0].reason == "malformed"
    feed.apply(sub_event("active"))
    broken = event("customer.subscription.updated", {"id": "sub_1", "customer": "cus_1"})
    out = feed.apply(broken)
    assert [d.reason for d in out.deadletters] == ["malformed"]
    assert out.state is not None  # its offset is recorded: reprocessing it is a duplicate
    assert feed.quota().limit == 1000


def test_catalog_matches_lookup_key_then_price_then_product() -> None:
    tenant = make_tenant({"prod_api": PlanEntry(quota=1), "price_basic": PlanEntry(quota=2)})
    feed = Feed(tenant)
    feed.apply(sub_event("active"))
    assert feed.quota().limit == 2


def test_alias_change_retires_the_old_quota_key() -> None:
    feed = Feed()
    feed.apply(sub_event("active"))
    assert feed.apply(sub_event("active", [(BASIC, 2)], created=BASE_TIME + 1)).retired_key is None
    named = customer("cus_1", metadata={"rating_id": "u-42"})
    out = feed.apply(event("customer.updated", named, created=BASE_TIME + 5))
    assert out.retired_key == "acme/cus_1"
    assert out.update is not None
    assert (out.update.key, out.update.version) == ("acme/u-42", 3)
    # The old id is published as blocked first, at a version above any it had.
    retired, moved = out.published()
    assert moved == out.update
    assert (retired.key, retired.version, retired.status) == ("acme/cus_1", 3, "blocked")
    assert (retired.limit, retired.remaining) == (0, 0)
    assert (retired.reason.kind, retired.reason.id) == ("policy", "alias_retired")


def test_unknown_price_is_reported_once_per_applied_snapshot() -> None:
    feed = Feed()
    ev = sub_event("active", [(UNKNOWN, 1)], created=BASE_TIME + 5)
    current = subscription("sub_1", "cus_1", "active", [(UNKNOWN, 1)], period=PERIOD)
    out = feed.apply(ev, fetched=current, now=BASE_TIME + 10)
    assert [d.reason for d in out.deadletters] == ["unknown_price"]
    assert (feed.quota().status, feed.quota().limit) == ("exhausted", 0)
