"""The pure derivation of tenant notifications from customer state transitions."""

from __future__ import annotations

from tables.billing_state import CustomerState
from tables.notification import Notification, notification_id
from tables.notifications import MAX_NOTICES, derive, reemit
from tables.quota import QuotaStatus, QuotaUpdate, Reason

PERIOD = 1_767_225_600
THRESHOLDS = (0.5, 0.8)


def state(
    used: int,
    *,
    limit: int | None = 100,
    status: QuotaStatus = "active",
    version: int = 1,
    period: int = PERIOD,
    base: CustomerState | None = None,
) -> CustomerState:
    """A customer whose last published quota says `status` at `version`; built on `base`
    (its marks and notices) when given, the way a transition builds on the previous state."""
    last = QuotaUpdate(
        tenant_id="acme",
        customer_id="rating-7",
        limit=limit,
        used=used,
        remaining=None if limit is None else max(limit - used, 0),
        status=status,
        period_start=period,
        period_end=period + 30 * 86_400,
        version=version,
        reason=Reason(kind="usage", id="b"),
        updated_at=1.0,
    )
    fields = {"used": used, "last": last, "period_start": period, "period_end": period + 1}
    if base is not None:
        return base.model_copy(update=fields)
    return CustomerState(tenant_id="acme", stripe_customer_id="cus_1", **fields)


def step(
    before: CustomerState | None, after: CustomerState, source: str = "t:0:1"
) -> tuple[CustomerState, list[Notification]]:
    new, made = derive(before, after, THRESHOLDS, source=source, now=1_767_300_000.0)
    return new, list(made)


def types(made: list[Notification]) -> list[str]:
    return [n.type for n in made]


def test_each_threshold_fires_once_per_period_however_often_usage_grows() -> None:
    s0 = state(10)
    s1, made = step(s0, state(55, base=s0))
    assert types(made) == ["quota.threshold_crossed"]
    assert made[0].data.threshold == 0.5
    s2, made = step(s1, state(60, base=s1), "t:0:2")
    assert made == []
    s3, made = step(s2, state(85, base=s2), "t:0:3")
    assert [(n.type, n.data.threshold) for n in made] == [("quota.threshold_crossed", 0.8)]
    _, made = step(s3, state(90, base=s3), "t:0:4")
    assert made == []


def test_a_jump_past_several_thresholds_fires_each_in_ascending_order() -> None:
    s0 = state(0)
    _, made = step(s0, state(99, base=s0))
    assert [n.data.threshold for n in made] == [0.5, 0.8]
    assert len({n.id for n in made}) == 2


def test_a_new_period_fires_the_thresholds_again_with_other_ids() -> None:
    s0 = state(0)
    s1, first = step(s0, state(60, base=s0))
    s2, _ = step(s1, state(0, base=s1, period=PERIOD + 100, version=2), "t:0:2")
    _, second = step(s2, state(60, base=s2, period=PERIOD + 100, version=2), "t:0:3")
    assert types(second) == ["quota.threshold_crossed"]
    assert first[0].id != second[0].id


def test_exhausted_then_restored_exactly_once_each() -> None:
    s0 = state(70)
    s1, made = step(s0, state(100, status="exhausted", version=2, base=s0))
    assert types(made) == ["quota.threshold_crossed"] * 2 + ["quota.exhausted"]
    s2, made = step(s1, state(120, status="exhausted", version=3, base=s1), "t:0:2")
    assert made == []
    s3, made = step(s2, state(120, limit=600, status="active", version=4, base=s2), "t:0:3")
    assert types(made) == ["quota.restored"]
    _, made = step(s3, state(130, limit=600, status="active", version=5, base=s3), "t:0:4")
    assert made == []


def test_grace_then_blocked_then_unblocked() -> None:
    s0 = state(10)
    s1, made = step(s0, state(10, status="grace", version=2, base=s0))
    assert types(made) == ["customer.grace_started"]
    s2, made = step(s1, state(10, status="blocked", version=3, base=s1), "t:0:2")
    assert types(made) == ["customer.blocked"]
    _, made = step(s2, state(10, status="active", version=4, base=s2), "t:0:3")
    assert types(made) == ["customer.unblocked"]


def test_a_new_customer_blocked_before_its_subscription_is_no_news() -> None:
    first, made = step(None, state(0, limit=0, status="blocked"))
    assert made == []
    _, made = step(first, state(0, status="active", version=2, base=first), "t:0:2")
    assert made == []


def test_the_same_transition_derived_twice_has_the_same_id() -> None:
    """A worker killed before its changelog write re-derives from the older state."""
    s0 = state(70)
    after = state(100, status="exhausted", version=2, base=s0)
    _, once = derive(s0, after, THRESHOLDS, source="t:0:9", now=1.0)
    _, again = derive(s0, after, THRESHOLDS, source="t:0:9", now=2.0)
    assert [n.id for n in once] == [n.id for n in again]
    assert once[-1].id == notification_id("acme", "cus_1", "quota.exhausted", PERIOD, version=2)


def test_a_reprocessed_input_re_emits_its_notices_and_no_other() -> None:
    s0 = state(10)
    s1, first = step(s0, state(60, base=s0), "usage:3:41")
    s2, second = step(s1, state(90, base=s1), "usage:3:42")
    assert reemit(s2, "usage:3:41") == tuple(first)
    assert reemit(s2, "usage:3:42") == tuple(second)
    assert reemit(s2, "usage:3:43") == ()


def test_notices_kept_for_re_emission_are_bounded() -> None:
    current = state(0)
    for i in range(2 * MAX_NOTICES + 5):
        status: QuotaStatus = "grace" if i % 2 == 0 else "active"
        current, _ = step(current, state(0, status=status, version=i + 2, base=current), f"t:0:{i}")
    assert len(current.notices) == MAX_NOTICES


def test_a_tenant_without_endpoints_gets_nothing_but_keeps_the_marks() -> None:
    s0 = state(70)
    exhausted = state(100, status="exhausted", version=2, base=s0)
    s1, made = derive(s0, exhausted, (), source="t:0:1", now=1.0, enabled=False)
    assert made == ()
    assert s1.notify.exhausted
    _, made = derive(
        s1, state(0, limit=600, version=3, base=s1), THRESHOLDS, source="t:0:2", now=2.0
    )
    assert [n.type for n in made] == ["quota.restored"]


def test_unlimited_and_zero_limits_cross_no_threshold() -> None:
    s0 = state(0, limit=None)
    _, made = step(s0, state(10**9, limit=None, base=s0))
    assert made == []
    z = state(0, limit=0)
    _, made = step(z, state(5, limit=0, base=z))
    assert made == []


def test_the_payload_carries_the_published_customer_and_the_quota() -> None:
    s0 = state(70)
    _, made = step(s0, state(100, status="exhausted", version=2, base=s0))
    exhausted = made[-1]
    assert exhausted.data.customer_id == "rating-7"
    assert exhausted.data.stripe_customer_id == "cus_1"
    assert (exhausted.data.limit, exhausted.data.used, exhausted.data.remaining) == (100, 100, 0)
    assert exhausted.timestamp.endswith("Z")
    assert Notification.from_json(exhausted.to_json()) == exhausted


def test_an_endpoint_wants_its_types_thresholds_and_feature_and_every_test_event() -> None:
    from pydantic import SecretStr

    from quotaflow.commands.tenants.endpoints import new_endpoint_secret
    from tables.tenant import NotificationEndpoint

    endpoint = NotificationEndpoint(
        id="ep_1",
        url="https://hooks.example/q",
        event_types=("quota.threshold_crossed", "quota.exhausted"),
        thresholds=(0.8,),
        feature="bulk",
        secret=SecretStr(new_endpoint_secret()),
    )
    assert endpoint.wants("quota.threshold_crossed", 0.8, "bulk")
    assert not endpoint.wants("quota.threshold_crossed", 0.5, "bulk")
    assert not endpoint.wants("quota.exhausted", None, None)  # another feature's (or none)
    assert not endpoint.wants("quota.restored", None, "bulk")
    assert endpoint.wants("notification.test", None, None)


def test_an_endpoint_without_a_feature_gets_the_whole_quotas_events_only() -> None:
    from pydantic import SecretStr

    from quotaflow.commands.tenants.endpoints import new_endpoint_secret
    from tables.tenant import NotificationEndpoint

    plain = NotificationEndpoint(
        id="ep_2", url="https://hooks.example/q", secret=SecretStr(new_endpoint_secret())
    )
    assert plain.wants("quota.exhausted", None, None)
    assert plain.wants("customer.blocked", None, None)
    assert not plain.wants("quota.exhausted", None, "bulk")  # a feature's: its endpoints'
    assert not plain.wants("quota.threshold_crossed", 0.8, "bulk")


def metered(
    used: dict[str, int],
    limits: dict[str, int | None],
    *,
    base: CustomerState,
    version: int = 1,
    period: int = PERIOD,
    status: QuotaStatus = "active",
) -> CustomerState:
    """`base` with named metered features: `limits` published, `used` counted."""
    from tables.quota import FeatureQuota

    after = state(0, base=base, version=version, period=period, status=status)
    assert after.last is not None
    quotas = {
        name: FeatureQuota(
            limit=limit,
            used=used.get(name, 0),
            remaining=None if limit is None else max(limit - used.get(name, 0), 0),
        )
        for name, limit in limits.items()
    }
    last = after.last.model_copy(update={"metered": quotas})
    return after.model_copy(update={"last": last, "feature_used": dict(used)})


def test_each_metered_feature_crosses_thresholds_once_per_period_with_its_own_ids() -> None:
    s0 = metered({}, {"bulk": 10, "ocr": 100}, base=state(0))
    s1, made = step(s0, metered({"bulk": 6, "ocr": 10}, {"bulk": 10, "ocr": 100}, base=s0))
    assert [(n.type, n.data.feature, n.data.threshold) for n in made] == [
        ("quota.threshold_crossed", "bulk", 0.5)
    ]
    assert (made[0].data.limit, made[0].data.used, made[0].data.remaining) == (10, 6, 4)
    first = made[0].id
    # The whole quota's threshold id is not the feature's.
    assert first != notification_id(
        "acme", "cus_1", "quota.threshold_crossed", PERIOD, threshold=0.5
    )
    s2, made = step(s1, metered({"bulk": 7, "ocr": 60}, {"bulk": 10, "ocr": 100}, base=s1), "t:0:2")
    assert [(n.data.feature, n.data.threshold) for n in made] == [("ocr", 0.5)]
    s3, made = step(s2, metered({"bulk": 8, "ocr": 61}, {"bulk": 10, "ocr": 100}, base=s2), "t:0:3")
    assert [(n.data.feature, n.data.threshold) for n in made] == [("bulk", 0.8)]
    # A new period: thresholds fire again, other ids.
    renewed = PERIOD + 100
    _, made = step(
        s3,
        metered({"bulk": 6}, {"bulk": 10, "ocr": 100}, base=s3, version=2, period=renewed),
        "t:0:4",
    )
    assert [(n.data.feature, n.data.threshold) for n in made] == [("bulk", 0.5)]
    assert made[0].id != first
    # The same transition derived again (a reprocessing) makes the same id.
    _, again = step(s0, metered({"bulk": 6, "ocr": 10}, {"bulk": 10, "ocr": 100}, base=s0))
    assert again[0].id == first


def test_a_feature_is_exhausted_and_restored_once_and_the_whole_quota_is_not() -> None:
    limits: dict[str, int | None] = {"bulk": 10}
    s0 = metered({"bulk": 9}, limits, base=state(0))
    s1, made = step(s0, metered({"bulk": 10}, limits, base=s0), "t:0:2")
    exhausted = [n for n in made if n.type == "quota.exhausted"]
    assert [(n.data.feature, n.data.status, n.data.remaining) for n in exhausted] == [
        ("bulk", "exhausted", 0)
    ]
    assert all(n.data.feature == "bulk" for n in made)  # the customer itself is active
    s2, made = step(s1, metered({"bulk": 12}, limits, base=s1), "t:0:3")
    assert "quota.exhausted" not in types(made)
    # A bigger plan: units again, told once; the feature's status is the customer's.
    bigger: dict[str, int | None] = {"bulk": 50}
    s3, made = step(s2, metered({"bulk": 12}, bigger, base=s2, version=2), "t:0:4")
    assert [(n.type, n.data.feature, n.data.status) for n in made] == [
        ("quota.restored", "bulk", "active")
    ]
    _, made = step(s3, metered({"bulk": 13}, bigger, base=s3, version=2), "t:0:5")
    assert "quota.restored" not in types(made)


def test_a_feature_gone_keeps_its_exhaustion_until_it_has_units_again() -> None:
    s0 = metered({"bulk": 10}, {"bulk": 10}, base=state(0))
    s1, _ = step(None, s0)
    s2, made = step(s1, metered({}, {}, base=s1, version=2), "t:0:2")  # subscription gone
    assert made == []
    _, made = step(s2, metered({}, {"bulk": 10}, base=s2, version=3, period=PERIOD + 9), "t:0:3")
    assert [(n.type, n.data.feature) for n in made] == [("quota.restored", "bulk")]


def test_only_the_features_an_endpoint_asks_about_are_emitted_but_all_are_marked() -> None:
    limits: dict[str, int | None] = {"bulk": 10, "ocr": 10}
    s0 = metered({}, limits, base=state(0))
    s1, made = derive(
        s0,
        metered({"bulk": 10, "ocr": 10}, limits, base=s0),
        THRESHOLDS,
        source="t:0:2",
        now=1_767_300_000.0,
        features=frozenset({"ocr"}),
    )
    assert {n.data.feature for n in made} == {"ocr"}
    assert s1.notify.features_exhausted == ("bulk", "ocr")
    # The whole quota's events are not filtered by it.
    _, made = derive(
        s1,
        state(100, base=s1, version=2),
        THRESHOLDS,
        source="t:0:3",
        now=1_767_300_000.0,
        features=frozenset(),
    )
    assert {n.data.feature for n in made} == {None}
    assert "quota.threshold_crossed" in types(list(made))
