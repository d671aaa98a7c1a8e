"""Tenant notifications in the worker's processors, over a dict store."""

from __future__ import annotations

import orjson
from pydantic import SecretStr

from quotaflow.commands.tenants.endpoints import new_endpoint_secret
from quotaflow.registry import StaticTenantRegistry
from streams.processing.billing import BillingEvent, BillingProcessor, parse
from streams.processing.effects import Effects, Record
from streams.processing.usage import UsageProcessor
from tables.billing import QuotaPolicy
from tables.tenant import NotificationEndpoint, Tenant
from tests.streams.test_processing import NOW, PERIOD, Offsets
from tests.tables.factories import BASIC, event, make_tenant, subscription


def tenant_with_endpoint() -> Tenant:
    endpoint = NotificationEndpoint(
        id="ep_1",
        url="https://hooks.example/q",
        thresholds=(0.5,),
        secret=SecretStr(new_endpoint_secret()),
    )
    return make_tenant().model_copy(update={"notification_endpoints": (endpoint,)})


def subscribed(tenant: Tenant) -> dict[bytes, bytes]:
    registry = StaticTenantRegistry([tenant])
    store: dict[bytes, bytes] = {}
    body = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
    )
    parsed = parse(Offsets().record(body), registry)
    assert isinstance(parsed, BillingEvent)
    effects = BillingProcessor(QuotaPolicy(), lambda: NOW).apply(store, {}, [(parsed, None)])
    assert effects.notifications == []  # a first subscription is no news
    keep(store, effects)
    return store


def keep(store: dict[bytes, bytes], effects: Effects) -> None:
    for key, (_, value) in effects.states.items():
        store[key] = value


def usage(offset: int, batch: str, units: int) -> Record:
    doc = {
        "batch_id": batch,
        "node_id": "n1",
        "region": "eu",
        "tenant_id": "acme",
        "sent_at": NOW,
        "received_at": NOW,
        "items": [{"customer_id": "cus_1", "units": units}],
    }
    return Record("usage.events", 2, offset, b"acme", orjson.dumps(doc))


def test_usage_makes_threshold_and_exhausted_once_and_a_reprocessed_record_resends_them() -> None:
    tenant = tenant_with_endpoint()
    store = subscribed(tenant)
    processor = UsageProcessor(
        lambda: StaticTenantRegistry([tenant]), QuotaPolicy(), (0.5, 1.0), lambda: NOW
    )
    first = processor.handle(store, {}, [usage(0, "n1:1", 600), usage(1, "n1:2", 500)])
    keep(store, first)
    made = [(p, n.type, n.data.threshold) for p, n in first.notifications]
    assert made == [
        (2, "quota.threshold_crossed", 0.5),
        (2, "quota.exhausted", None),
    ]
    # The worker died after the changelog write: both records come again.
    again = processor.handle(store, {}, [usage(0, "n1:1", 600), usage(1, "n1:2", 500)])
    assert [n.id for _, n in again.notifications] == [n.id for _, n in first.notifications]
    # A later batch of the same period tells nothing new.
    later = processor.handle(store, {}, [usage(2, "n1:3", 10)])
    assert later.notifications == []


def test_a_tenant_without_endpoints_makes_no_notifications() -> None:
    tenant = make_tenant()
    store = subscribed(tenant)
    processor = UsageProcessor(
        lambda: StaticTenantRegistry([tenant]), QuotaPolicy(), (0.5, 1.0), lambda: NOW
    )
    effects = processor.handle(store, {}, [usage(0, "n1:1", 5000)])
    assert effects.notifications == []
    assert [u.status for _, u in effects.quota_updates()] == ["exhausted"]


def test_usage_of_a_metered_feature_is_told_to_that_features_endpoint_only() -> None:
    from tables.tenant import MeteredFeature

    plain = NotificationEndpoint(
        id="ep_plain",
        url="https://hooks.example/q",
        thresholds=(0.5,),
        secret=SecretStr(new_endpoint_secret()),
    )
    bulk = NotificationEndpoint(
        id="ep_bulk",
        url="https://hooks.example/bulk",
        thresholds=(0.5,),
        feature="bulk",
        secret=SecretStr(new_endpoint_secret()),
    )
    base = make_tenant()
    basic = base.plans["basic"].model_copy(update={"metered": {"bulk": MeteredFeature(quota=40)}})
    tenant = base.model_copy(
        update={"plans": {**base.plans, "basic": basic}, "notification_endpoints": (plain, bulk)}
    )
    store = subscribed(tenant)
    processor = UsageProcessor(
        lambda: StaticTenantRegistry([tenant]), QuotaPolicy(), (0.5, 1.0), lambda: NOW
    )

    def feature_usage(offset: int, batch: str, units: int) -> Record:
        doc = orjson.loads(usage(offset, batch, 0).value)
        doc["items"] = [{"customer_id": "cus_1", "units": units, "feature": "bulk"}]
        return Record("usage.events", 2, offset, b"acme", orjson.dumps(doc))

    first = processor.handle(store, {}, [feature_usage(0, "n1:1", 25)])
    keep(store, first)
    second = processor.handle(store, {}, [feature_usage(1, "n1:2", 20), usage(2, "n1:3", 1)])
    keep(store, second)
    told = [n for _, n in first.notifications + second.notifications]
    assert [(n.type, n.data.feature, n.data.threshold) for n in told] == [
        ("quota.threshold_crossed", "bulk", 0.5),
        ("quota.exhausted", "bulk", None),
    ]
    assert (told[1].data.limit, told[1].data.used, told[1].data.remaining) == (40, 45, 0)
    # The notifier's routing: a feature's notifications go to its endpoints only.
    for n in told:
        wanting = [
            e.id
            for e in tenant.notification_endpoints
            if e.wants(n.type, n.data.threshold, n.data.feature)
        ]
        assert wanting == ["ep_bulk"]
    # A later batch of the period: nothing new (the marks are in the state).
    again = processor.handle(store, {}, [feature_usage(3, "n1:4", 5)])
    assert again.notifications == []
