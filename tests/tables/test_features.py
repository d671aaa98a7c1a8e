"""Entitlements per feature: plan catalog -> subscription -> quota record -> usage."""

from __future__ import annotations

import jsonschema
import pytest
from pydantic import ValidationError

from quotaflow.schemas import QUOTA_UPDATE_V1, load
from tables.billing import Source
from tables.billing_state import FeatureGrant, ItemState
from tables.policy import entitlement_of
from tables.quota import QuotaUpdate
from tables.tenant import MeteredFeature, PlanEntry
from tables.usage import MAX_FEATURES, meters_of
from tests.tables.factories import (
    BASE_TIME,
    BASIC,
    DAY,
    PRO,
    Feed,
    Price,
    entitlement_summary,
    event,
    make_tenant,
    subscription,
)

PERIOD = (BASE_TIME, BASE_TIME + 30 * DAY)
NEXT = (BASE_TIME + 30 * DAY, BASE_TIME + 60 * DAY)
EXPORTS = Price("price_exports", "exports", product="prod_exports")


def feature_tenant() -> Feed:
    plans = {
        "basic": PlanEntry(quota=1000, rate_per_second=10, features=("api",)),
        "pro": PlanEntry(
            quota=10_000,
            meter_event_name="api_calls",
            features=("api", "bulk"),
            metered={
                "exports": MeteredFeature(quota=100, rate_per_second=2, meter_event_name="exports"),
                "seats": MeteredFeature(quota=5),
            },
        ),
        "exports": PlanEntry(
            quota=0,
            metered={"exports": MeteredFeature(quota=50, rate_per_second=1)},
        ),
    }
    return Feed(make_tenant(plans))


def subscribe(
    feed: Feed, items: list[tuple[Price, int]], *, period: tuple[int, int] = PERIOD
) -> None:
    feed.apply(
        event(
            "customer.subscription.created",
            subscription("sub_1", "cus_1", "active", items, period=period),
            created=period[0],
        )
    )


def test_a_plan_entry_without_metered_is_todays_single_quota_plan() -> None:
    plan = PlanEntry.model_validate({"quota": 10, "rate_per_second": 5, "features": ["api"]})
    assert plan.metered == {}
    grant = entitlement_of([ItemState(lookup_key="x", quantity=3)], make_tenant({"x": plan}))
    assert (grant.quota, grant.rate_per_second, grant.features, grant.metered) == (
        30,
        15.0,
        ("api",),
        (),
    )


def test_catalog_refuses_a_feature_both_boolean_and_metered_and_bad_names() -> None:
    with pytest.raises(ValidationError, match="both boolean and metered"):
        PlanEntry(quota=1, features=("x",), metered={"x": MeteredFeature(quota=1)})
    with pytest.raises(ValidationError, match="must match"):
        PlanEntry(quota=1, metered={"no spaces": MeteredFeature(quota=1)})
    with pytest.raises(ValidationError):
        PlanEntry(quota=1, metered={"x": MeteredFeature(quota=1, rate_per_second=0)})


def test_metered_grants_multiply_by_quantity_and_add_across_items() -> None:
    tenant = feature_tenant().tenant
    grant = entitlement_of(
        [ItemState(lookup_key="pro", quantity=2), ItemState(lookup_key="exports", quantity=3)],
        tenant,
    )
    assert grant.metered == (
        FeatureGrant("exports", 2 * 100 + 3 * 50, 2 * 2.0 + 3 * 1.0),
        FeatureGrant("seats", 10, None),
    )
    assert grant.quota == 20_000


def test_unlimited_feature_wins_over_a_limited_one() -> None:
    tenant = make_tenant(
        {
            "a": PlanEntry(quota=1, metered={"f": MeteredFeature(quota=5)}),
            "b": PlanEntry(quota=1, metered={"f": MeteredFeature(quota=None)}),
        }
    )
    grant = entitlement_of([ItemState(lookup_key="a"), ItemState(lookup_key="b")], tenant)
    assert grant.metered == (FeatureGrant("f", None, None),)


def test_the_quota_record_carries_each_metered_feature() -> None:
    feed = feature_tenant()
    subscribe(feed, [(PRO, 1)])
    q = feed.quota()
    assert (q.limit, q.remaining, q.features) == (10_000, 10_000, ("api", "bulk"))
    assert set(q.metered) == {"exports", "seats"}
    exports = q.metered["exports"]
    assert (exports.limit, exports.used, exports.remaining, exports.rate_per_second) == (
        100,
        0,
        100,
        2.0,
    )
    assert q.metered["seats"].rate_per_second is None


def test_usage_counts_per_feature_once_per_batch() -> None:
    feed = feature_tenant()
    subscribe(feed, [(PRO, 1)])
    out = feed.usage("edge-1:1", 7, now=BASE_TIME + 5, features={"exports": 30, "seats": 2})
    applied_at = feed.offset
    assert out.update is not None
    q = feed.quota()
    assert (q.used, q.metered["exports"].used, q.metered["exports"].remaining) == (7, 30, 70)
    assert q.metered["seats"].used == 2
    again = feed.usage("edge-1:1", 7, now=BASE_TIME + 6, features={"exports": 30})
    assert again.duplicate
    reprocessed = feed.usage(
        "edge-1:2", 1, now=BASE_TIME + 6, features={"exports": 1}, source=Source(0, applied_at)
    )
    assert reprocessed.duplicate
    assert feed.quota().metered["exports"].used == 30


def test_a_feature_exhausted_does_not_exhaust_the_customer() -> None:
    feed = feature_tenant()
    subscribe(feed, [(PRO, 1)])
    feed.usage("edge-1:1", 0, now=BASE_TIME + 5, features={"exports": 100})
    q = feed.quota()
    assert q.status == "active"
    assert (q.metered["exports"].remaining, q.remaining) == (0, 10_000)


def test_usage_of_a_feature_publishes_at_thresholds_only() -> None:
    feed = feature_tenant()
    subscribe(feed, [(PRO, 1)])
    thresholds = (0.5, 1.0)
    first = feed.usage(
        "edge-1:1", 0, now=BASE_TIME + 5, features={"exports": 10}, thresholds=thresholds
    )
    assert first.update is None  # 10 of 100: no threshold crossed
    crossed = feed.usage(
        "edge-1:2", 0, now=BASE_TIME + 5, features={"exports": 45}, thresholds=thresholds
    )
    assert crossed.update is not None
    assert crossed.update.metered["exports"].used == 55


def test_a_new_period_resets_every_features_usage() -> None:
    feed = feature_tenant()
    subscribe(feed, [(PRO, 1)])
    feed.usage("edge-1:1", 3, now=BASE_TIME + 5, features={"exports": 30})
    subscribe(feed, [(PRO, 1)], period=NEXT)
    q = feed.quota()
    assert (q.used, q.metered["exports"].used, q.period_start) == (0, 0, NEXT[0])


def test_a_blocked_customer_has_no_metered_features() -> None:
    feed = feature_tenant()
    subscribe(feed, [(PRO, 1)])
    feed.apply(
        event(
            "customer.subscription.deleted",
            subscription("sub_1", "cus_1", "canceled", [(PRO, 1)], period=PERIOD),
            created=BASE_TIME + 10,
        )
    )
    q = feed.quota()
    assert (q.status, q.metered) == ("blocked", {})


def test_stripe_entitlements_become_boolean_features() -> None:
    feed = feature_tenant()
    subscribe(feed, [(BASIC, 1)])
    feed.apply(
        event(
            "entitlements.active_entitlement_summary.updated",
            entitlement_summary("cus_1", ["sso", "audit-log"]),
            created=BASE_TIME + 3,
        )
    )
    assert feed.quota().features == ("api", "audit-log", "sso")
    feed.apply(
        event(
            "entitlements.active_entitlement_summary.updated",
            entitlement_summary("cus_1", ["audit-log"]),
            created=BASE_TIME + 4,
        )
    )
    assert feed.quota().features == ("api", "audit-log")


def test_feature_names_past_the_bound_are_not_counted_and_say_so() -> None:
    feed = feature_tenant()
    subscribe(feed, [(PRO, 1)])
    many = {f"f{i}": 1 for i in range(MAX_FEATURES)}
    feed.usage("edge-1:1", 0, now=BASE_TIME + 5, features=many)
    out = feed.usage("edge-1:2", 0, now=BASE_TIME + 5, features={"one-too-many": 1, "f0": 1})
    assert [d.reason for d in out.deadletters] == ["too_many_features"]
    assert feed.state is not None
    assert "one-too-many" not in feed.state.feature_used
    assert feed.state.feature_used["f0"] == 2


def test_meters_per_feature() -> None:
    feed = feature_tenant()
    subscribe(feed, [(PRO, 1), (EXPORTS, 1)])
    assert feed.state is not None
    assert meters_of(feed.state, feed.tenant) == ("api_calls",)
    assert meters_of(feed.state, feed.tenant, "exports") == ("exports",)
    assert meters_of(feed.state, feed.tenant, "seats") == ()


def test_a_version_2_record_is_a_valid_version_1_record_and_round_trips() -> None:
    feed = feature_tenant()
    subscribe(feed, [(PRO, 1)])
    feed.usage("edge-1:1", 5, now=BASE_TIME + 5, features={"exports": 3})
    doc = feed.quota().model_dump(mode="json")
    jsonschema.Draft202012Validator(load(QUOTA_UPDATE_V1)).validate(doc)
    # A version-1 reader (the README's consumer) reads the default feature, as before.
    assert (doc["status"], doc["remaining"], doc["used"]) == ("active", 9_995, 5)
    assert QuotaUpdate.from_json(feed.quota().to_json()) == feed.quota()
    assert doc["metered"]["exports"] == {
        "limit": 100,
        "used": 3,
        "remaining": 97,
        "rate_per_second": 2.0,
    }
