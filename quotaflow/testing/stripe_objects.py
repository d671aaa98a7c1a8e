"""Stripe objects and events as a test or a bench builds them, in current (basil+) and
localstripe shapes: plain JSON documents, no quotaflow types (the tests' factories add
tenants and a feed of the domain on top, `tests/tables/factories.py`).

`shape="basil"`: prices under `items.data[].price`, periods on each item, invoices
linked through `parent.subscription_details.subscription`, lines priced through
`pricing.price_details`. `shape="legacy"`: what localstripe and pre-2025-03-31
endpoints send: `items.data[].plan`, periods on the subscription, `invoice.subscription`
and `plan` on lines.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Shape = Literal["basil", "legacy"]
JSON = dict[str, Any]
BASE_TIME = 1_760_000_000
DAY = 86_400
_ids = itertools.count(1)


def next_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):08d}"


@dataclass(frozen=True)
class Price:
    """A catalog price: id, optional lookup_key, product."""

    id: str
    lookup_key: str | None = None
    product: str = "prod_api"

    def as_price(self) -> JSON:
        return {
            "id": self.id,
            "object": "price",
            "active": True,
            "currency": "usd",
            "lookup_key": self.lookup_key,
            "product": self.product,
            "recurring": {"interval": "month", "usage_type": "licensed"},
            "type": "recurring",
            "unit_amount": 1000,
            "metadata": {},
        }

    def as_plan(self) -> JSON:
        return {
            "id": self.id,
            "object": "plan",
            "active": True,
            "amount": 1000,
            "currency": "usd",
            "interval": "month",
            "product": self.product,
            "usage_type": "licensed",
        }


BASIC = Price("price_basic", "basic")
PRO = Price("price_pro", "pro")
UNLIMITED = Price("price_unlimited")
TOPUP = Price("price_topup_500", product="prod_topup")
LEGACY = Price("plan_legacy")
UNKNOWN = Price("price_mystery", "mystery", product="prod_mystery")


def subscription(
    sub_id: str,
    customer: str,
    status: str,
    items: Sequence[tuple[Price, int]],
    *,
    period: tuple[int, int],
    shape: Shape = "basil",
    metadata: Mapping[str, str] | None = None,
    created: int = BASE_TIME,
) -> JSON:
    """A subscription object with one item per (price, quantity)."""
    start, end = period
    item_list = []
    for n, (price, qty) in enumerate(items):
        item: JSON = {
            "id": f"si_{sub_id}_{n}",
            "object": "subscription_item",
            "quantity": qty,
            "subscription": sub_id,
            "metadata": {},
        }
        if shape == "basil":
            item |= {
                "price": price.as_price(),
                "current_period_start": start,
                "current_period_end": end,
            }
        else:
            item |= {"plan": price.as_plan()}
        item_list.append(item)
    obj: JSON = {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "created": created,
        "cancel_at_period_end": False,
        "cancel_at": None,
        "ended_at": None,
        "trial_end": None,
        "metadata": dict(metadata or {}),
        "items": {"object": "list", "data": item_list, "has_more": False},
    }
    if shape == "legacy":
        obj |= {"current_period_start": start, "current_period_end": end}
    if status in ("canceled", "incomplete_expired"):
        obj["ended_at"] = end
    return obj


def customer(cus_id: str, *, metadata: Mapping[str, str] | None = None) -> JSON:
    return {
        "id": cus_id,
        "object": "customer",
        "email": "dev@example.com",
        "metadata": dict(metadata or {}),
        "invoice_settings": {"default_payment_method": "pm_card_visa"},
    }


def deleted_customer(cus_id: str) -> JSON:
    return {"id": cus_id, "object": "customer", "deleted": True}


def invoice(
    inv_id: str,
    customer_id: str,
    *,
    subscription_id: str | None,
    status: str = "paid",
    lines: Sequence[tuple[Price, int]] = (),
    paid_at: int | None = None,
    shape: Shape = "basil",
) -> JSON:
    line_list: list[JSON] = []
    for n, (price, qty) in enumerate(lines):
        line: JSON = {"id": f"il_{inv_id}_{n}", "object": "line_item", "quantity": qty}
        if shape == "basil":
            line["pricing"] = {
                "type": "price_details",
                "price_details": {"price": price.id, "product": price.product},
            }
        else:
            line["plan"] = price.as_plan()
        line_list.append(line)
    obj: JSON = {
        "id": inv_id,
        "object": "invoice",
        "customer": customer_id,
        "status": status,
        "lines": {"object": "list", "data": line_list, "has_more": False},
        "status_transitions": {"paid_at": paid_at if status == "paid" else None},
    }
    if shape == "basil":
        obj["parent"] = (
            None
            if subscription_id is None
            else {
                "type": "subscription_details",
                "subscription_details": {"subscription": subscription_id, "metadata": {}},
            }
        )
    else:
        obj["subscription"] = subscription_id
        obj["paid"] = status == "paid"
    return obj


def checkout_session(customer_id: str, subscription_id: str | None) -> JSON:
    return {
        "id": next_id("cs"),
        "object": "checkout.session",
        "customer": customer_id,
        "mode": "subscription" if subscription_id else "payment",
        "subscription": subscription_id,
        "status": "complete",
        "payment_status": "paid",
    }


def entitlement_summary(customer_id: str, lookup_keys: Sequence[str]) -> JSON:
    return {
        "object": "entitlements.active_entitlement_summary",
        "customer": customer_id,
        "livemode": False,
        "entitlements": {
            "object": "list",
            "data": [
                {"id": next_id("ent"), "object": "entitlements.active_entitlement", "lookup_key": k}
                for k in lookup_keys
            ],
            "has_more": False,
        },
    }


def event(
    event_type: str,
    obj: Mapping[str, Any],
    *,
    created: int = BASE_TIME,
    event_id: str | None = None,
    shape: Shape = "basil",
    previous: Mapping[str, Any] | None = None,
) -> JSON:
    """A Stripe Event envelope around a copy of `obj`."""
    data: JSON = {"object": dict(obj)}
    if previous is not None:
        data["previous_attributes"] = dict(previous)
    return {
        "id": event_id or next_id("evt"),
        "object": "event",
        "api_version": "2025-03-31.basil" if shape == "basil" else "2020-08-27",
        "created": created,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": data,
    }
