"""Readers of Stripe objects as delivered in webhooks, across API versions.

Stripe renders `data.object` at the endpoint's pinned API version, so one tenant may
send current shapes and another older ones:

- basil (2025-03-31) and later: billing periods on each subscription item
  (`items.data[].current_period_start/end`), prices under `items.data[].price`, and
  an invoice's subscription at `parent.subscription_details.subscription`; invoice
  lines name their price at `pricing.price_details.price`.
- older versions and localstripe: `items.data[].plan` instead of `price` (a plan id
  stands for a price id, no `lookup_key`), `current_period_*` on the subscription,
  `invoice.subscription`, invoice lines with `price` or `plan` objects.

Every reader here accepts both, treats ids that Stripe may expand into objects
(`customer`, `product`, `subscription`, `price`) as either form, and never raises
anything but `MalformedObject` on input it cannot read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAPS",
    "InvoiceLine",
    "InvoiceView",
    "ItemView",
    "MalformedObject",
    "SubscriptionView",
    "customer_alias",
    "expandable_id",
    "read_invoice",
    "read_subscription",
]


# isinstance against a concrete class is several times cheaper than against the ABC, and
# parsed JSON is always a dict: try dict first.
MAPS = (dict, Mapping)


class MalformedObject(ValueError):
    """A Stripe object lacks a field quotaflow needs, or has it in an unreadable form."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def expandable_id(value: Any) -> str | None:
    """The id of a field Stripe may send as an id string or as an expanded object."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, MAPS):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def _int(value: Any) -> int | None:
    # bool is an int subclass; Stripe never sends booleans where we read integers.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _list(container: Any) -> list[Any]:
    """`container.data` of a Stripe list object, or a bare list; else empty."""
    if isinstance(container, MAPS):
        data = container.get("data")
        return data if isinstance(data, list) else []
    return container if isinstance(container, list) else []


@dataclass(frozen=True, slots=True)
class ItemView:
    """One subscription item: which price, how many, which period (if item-level)."""

    price: str | None
    lookup_key: str | None
    product: str | None
    quantity: int
    period_start: int | None
    period_end: int | None


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    """What quotaflow reads from a subscription object."""

    id: str
    customer: str | None
    status: str
    items: tuple[ItemView, ...]
    period_start: int | None
    period_end: int | None
    metadata: Mapping[str, Any]


def _read_item(raw: Any) -> ItemView:
    if not isinstance(raw, MAPS):
        raise MalformedObject("subscription item is not an object")
    price_obj = raw.get("price")
    if not isinstance(price_obj, MAPS):
        # Older API versions and localstripe: a plan object stands for the price.
        price_obj = raw.get("plan")
    if isinstance(price_obj, MAPS):
        price = _str(price_obj.get("id"))
        lookup_key = _str(price_obj.get("lookup_key"))
        product = expandable_id(price_obj.get("product"))
    else:
        price, lookup_key, product = expandable_id(raw.get("price")), None, None
    quantity = _int(raw.get("quantity"))
    return ItemView(
        price=price,
        lookup_key=lookup_key,
        product=product,
        # Metered prices have no quantity: one unit of the catalog entry.
        quantity=1 if quantity is None else max(quantity, 0),
        period_start=_int(raw.get("current_period_start")),
        period_end=_int(raw.get("current_period_end")),
    )


def read_subscription(obj: Mapping[str, Any]) -> SubscriptionView:
    """Reads a subscription in any supported shape; raises `MalformedObject`."""
    sub_id = _str(obj.get("id"))
    status = _str(obj.get("status"))
    if sub_id is None or status is None:
        raise MalformedObject("subscription without id or status")
    metadata = obj.get("metadata")
    return SubscriptionView(
        id=sub_id,
        customer=expandable_id(obj.get("customer")),
        status=status,
        items=tuple(_read_item(item) for item in _list(obj.get("items"))),
        period_start=_int(obj.get("current_period_start")),
        period_end=_int(obj.get("current_period_end")),
        metadata=metadata if isinstance(metadata, MAPS) else {},
    )


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One invoice line's price and quantity (for top-ups)."""

    price: str | None
    lookup_key: str | None
    product: str | None
    quantity: int


@dataclass(frozen=True, slots=True)
class InvoiceView:
    """What quotaflow reads from an invoice object."""

    id: str
    customer: str | None
    subscription: str | None
    status: str | None
    paid_at: int | None
    lines: tuple[InvoiceLine, ...]


def _read_line(raw: Any) -> InvoiceLine | None:
    if not isinstance(raw, MAPS):
        return None
    quantity = _int(raw.get("quantity"))
    qty = 1 if quantity is None else max(quantity, 0)
    pricing = raw.get("pricing")
    if isinstance(pricing, MAPS):
        # basil and later: pricing.price_details.{price, product}, ids only.
        details = pricing.get("price_details")
        if isinstance(details, MAPS):
            price = details.get("price")
            return InvoiceLine(
                price=expandable_id(price),
                lookup_key=_str(price.get("lookup_key")) if isinstance(price, MAPS) else None,
                product=expandable_id(details.get("product")),
                quantity=qty,
            )
    price_obj = raw.get("price")
    if not isinstance(price_obj, MAPS):
        price_obj = raw.get("plan")
    if isinstance(price_obj, MAPS):
        return InvoiceLine(
            price=_str(price_obj.get("id")),
            lookup_key=_str(price_obj.get("lookup_key")),
            product=expandable_id(price_obj.get("product")),
            quantity=qty,
        )
    return None


def read_invoice(obj: Mapping[str, Any]) -> InvoiceView:
    """Reads an invoice in any supported shape; raises `MalformedObject`."""
    inv_id = _str(obj.get("id"))
    if inv_id is None:
        raise MalformedObject("invoice without id")
    subscription = None
    parent = obj.get("parent")
    if isinstance(parent, MAPS):
        details = parent.get("subscription_details")
        if isinstance(details, MAPS):
            subscription = expandable_id(details.get("subscription"))
    if subscription is None:
        subscription = expandable_id(obj.get("subscription"))
    transitions = obj.get("status_transitions")
    paid_at = _int(transitions.get("paid_at")) if isinstance(transitions, MAPS) else None
    lines = tuple(line for line in map(_read_line, _list(obj.get("lines"))) if line is not None)
    return InvoiceView(
        id=inv_id,
        customer=expandable_id(obj.get("customer")),
        subscription=subscription,
        status=_str(obj.get("status")),
        paid_at=paid_at,
        lines=lines,
    )


def customer_alias(metadata: Any, key: str | None) -> str | None:
    """The tenant's own id for a customer, from the object's metadata, if configured."""
    if key is None or not isinstance(metadata, MAPS):
        return None
    value = metadata.get(key)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None
