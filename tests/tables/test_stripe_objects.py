"""Reading Stripe objects in current (basil) and older/localstripe shapes."""

from __future__ import annotations

import pytest

from tables.stripe_objects import (
    MalformedObject,
    customer_alias,
    expandable_id,
    read_invoice,
    read_subscription,
)
from tests.tables.factories import BASE_TIME, BASIC, LEGACY, TOPUP, invoice, subscription

PERIOD = (BASE_TIME, BASE_TIME + 100)


def test_basil_subscription_has_item_periods_and_prices() -> None:
    view = read_subscription(subscription("sub_1", "cus_1", "active", [(BASIC, 2)], period=PERIOD))
    assert (view.id, view.customer, view.status) == ("sub_1", "cus_1", "active")
    (item,) = view.items
    assert (item.price, item.lookup_key, item.product, item.quantity) == (
        "price_basic",
        "basic",
        "prod_api",
        2,
    )
    assert (item.period_start, item.period_end) == PERIOD
    assert (view.period_start, view.period_end) == (None, None)


def test_legacy_subscription_has_plans_and_subscription_periods() -> None:
    obj = subscription("sub_1", "cus_1", "trialing", [(LEGACY, 1)], period=PERIOD, shape="legacy")
    view = read_subscription(obj)
    (item,) = view.items
    assert (item.price, item.lookup_key, item.period_start) == ("plan_legacy", None, None)
    assert (view.period_start, view.period_end) == PERIOD


def test_expanded_ids_read_as_ids() -> None:
    assert expandable_id({"id": "cus_1", "object": "customer"}) == "cus_1"
    assert expandable_id("cus_1") == "cus_1"
    assert expandable_id(None) is None
    assert expandable_id("") is None
    assert expandable_id(7) is None


@pytest.mark.parametrize(
    "obj", [{}, {"id": "sub_1"}, {"status": "active"}, {"id": 5, "status": "active"}]
)
def test_subscription_without_id_or_status_is_malformed(obj: dict[str, object]) -> None:
    with pytest.raises(MalformedObject):
        read_subscription(obj)


def test_garbage_items_are_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedObject):
        read_subscription({"id": "sub_1", "status": "active", "items": {"data": ["x"]}})


def test_missing_quantity_is_one() -> None:
    obj = subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD)
    del obj["items"]["data"][0]["quantity"]
    assert read_subscription(obj).items[0].quantity == 1


@pytest.mark.parametrize("shape", ["basil", "legacy"])
def test_invoice_subscription_and_lines_in_both_shapes(shape: str) -> None:
    obj = invoice(
        "in_1",
        "cus_1",
        subscription_id="sub_1",
        lines=[(TOPUP, 3)],
        paid_at=BASE_TIME,
        shape=shape,  # type: ignore[arg-type]
    )
    view = read_invoice(obj)
    assert (view.id, view.customer, view.subscription, view.status, view.paid_at) == (
        "in_1",
        "cus_1",
        "sub_1",
        "paid",
        BASE_TIME,
    )
    (line,) = view.lines
    assert (line.price, line.product, line.quantity) == ("price_topup_500", "prod_topup", 3)


def test_customer_alias() -> None:
    assert customer_alias({"rating_id": " u-1 "}, "rating_id") == "u-1"
    assert customer_alias({"rating_id": ""}, "rating_id") is None
    assert customer_alias({"rating_id": 5}, "rating_id") is None
    assert customer_alias({"rating_id": "u-1"}, None) is None
    assert customer_alias(None, "rating_id") is None
