"""Rate limits (a token bucket per customer) and features at the cache, on an injected clock."""

from __future__ import annotations

import pytest

from edge.cache import (
    BLOCKED,
    EXHAUSTED,
    GRACE_ENDED,
    NO_ENTITLEMENT,
    UNLIMITED,
    Decision,
    QuotaCache,
    RateLimited,
)
from tables.quota import QuotaStatus, QuotaUpdate
from tests.edge.factories import quota_update


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def quota(
    version: int = 1,
    *,
    limit: int | None = 100,
    used: int = 0,
    status: QuotaStatus = "active",
    rate: float | None = None,
    features: tuple[str, ...] = (),
    grace_until: float | None = None,
    customer: str = "c1",
) -> QuotaUpdate:
    return quota_update(
        version,
        customer=customer,
        limit=limit,
        used=used,
        status=status,
        rate=rate,
        features=features,
        grace_until=grace_until,
    )


def cache_with(update: QuotaUpdate, clock: Clock, *, share: float = 1.0) -> QuotaCache:
    cache = QuotaCache(clock=clock, wall_clock=lambda: 5000.0, rate_share=share)
    assert cache.apply(update)
    return cache


def allowed_in_a_row(cache: QuotaCache, customer: str = "c1") -> int:
    n = 0
    while cache.consume("t1", customer).allowed:
        n += 1
        if n > 10_000:
            raise AssertionError("never rate limited")
    return n


def test_a_burst_of_one_seconds_worth_then_one_call_per_refilled_token() -> None:
    clock = Clock()
    cache = cache_with(quota(rate=5), clock)
    assert allowed_in_a_row(cache) == 5
    denied = cache.consume("t1", "c1")
    assert denied == (False, 95, "rate_limited")
    assert isinstance(denied, RateLimited)
    assert denied.retry_after == 0.2
    clock.now += 0.1  # half a token: still limited, and the hint shrinks
    assert cache.consume("t1", "c1").retry_after == 0.1
    clock.now += 0.1
    assert cache.consume("t1", "c1") == (True, 94, "ok")
    assert not cache.consume("t1", "c1").allowed
    clock.now += 60  # refills to the burst, no further
    assert allowed_in_a_row(cache) == 5


def test_a_rate_below_one_still_allows_one_call_and_hints_the_wait() -> None:
    clock = Clock()
    cache = cache_with(quota(rate=0.5), clock)
    assert allowed_in_a_row(cache) == 1
    assert cache.check("t1", "c1").retry_after == 2.0
    clock.now += 2.0
    assert cache.consume("t1", "c1").allowed


def test_a_rate_of_zero_allows_no_call_and_gives_no_retry_hint() -> None:
    cache = cache_with(quota(rate=0.0), Clock())
    denied = cache.consume("t1", "c1")
    assert (denied.allowed, denied.remaining, denied.reason) == (False, 100, "rate_limited")
    assert denied.retry_after is None


def test_check_and_cost_zero_probes_spend_no_token_and_cost_does_not_matter() -> None:
    clock = Clock()
    cache = cache_with(quota(rate=2), clock)
    for _ in range(10):
        assert cache.check("t1", "c1", 50) == (True, 50, "ok")
        assert cache.consume("t1", "c1", 0) == (True, 100, "ok")
    # A call is a call: two tokens, two calls, whatever they cost in units.
    assert cache.consume("t1", "c1", 30) == (True, 70, "ok")
    assert cache.consume("t1", "c1", 1) == (True, 69, "ok")
    assert cache.check("t1", "c1") == (False, 69, "rate_limited")
    assert cache.consume("t1", "c1", 0) == (False, 69, "rate_limited")
    assert cache.drain_usage() == {("t1", "c1"): 31}


def test_a_rate_limited_call_counts_nothing() -> None:
    cache = cache_with(quota(rate=1), Clock())
    assert cache.consume("t1", "c1", 5).allowed
    assert cache.consume("t1", "c1", 5) == (False, 95, "rate_limited")
    assert cache.drain_usage() == {("t1", "c1"): 5}


def test_an_unlimited_customer_with_a_rate_is_rate_limited() -> None:
    clock = Clock()
    cache = cache_with(quota(limit=None, rate=3), clock)
    assert [cache.consume("t1", "c1") for _ in range(3)] == [UNLIMITED] * 3
    denied = cache.consume("t1", "c1")
    assert (denied.allowed, denied.remaining, denied.reason) == (False, None, "rate_limited")
    assert denied.retry_after == pytest.approx(0.334)
    clock.now += 1 / 3
    assert cache.consume("t1", "c1") == UNLIMITED


def test_a_customer_without_a_rate_is_never_rate_limited() -> None:
    cache = cache_with(quota(limit=None), Clock())
    assert all(cache.consume("t1", "c1") == UNLIMITED for _ in range(5000))
    assert cache.consume("t1", "c1").retry_after is None


def test_a_new_record_keeps_the_bucket_level_and_applies_the_new_rate() -> None:
    clock = Clock()
    cache = cache_with(quota(1, rate=4), clock)
    assert allowed_in_a_row(cache) == 4
    cache.apply(quota(2, rate=4))
    assert not cache.consume("t1", "c1").allowed  # a push hands out no fresh burst
    cache.apply(quota(3, rate=10))  # an upgrade: refills at the new rate from empty
    clock.now += 0.5
    assert allowed_in_a_row(cache) == 5
    cache.apply(quota(4, rate=None))  # the limit is gone (9 units still undrained)
    assert allowed_in_a_row(cache, "c1") == 91  # then only the quota stops it
    cache.apply(quota(5, rate=2, used=100, limit=1000))  # limited again: a full bucket
    assert allowed_in_a_row(cache) == 2


def test_each_node_enforces_its_configured_share_of_the_rate() -> None:
    clock = Clock()
    cache = cache_with(quota(rate=10), clock, share=0.25)
    assert allowed_in_a_row(cache) == 2  # 2.5 tokens a second, burst 2.5
    assert cache.check("t1", "c1").retry_after == 0.2
    with pytest.raises(ValueError, match="rate_share"):
        QuotaCache(rate_share=0.0)
    with pytest.raises(ValueError, match="rate_share"):
        QuotaCache(rate_share=1.5)


def test_a_call_naming_a_feature_the_record_lacks_is_no_entitlement() -> None:
    cache = cache_with(quota(features=("bulk", "export")), Clock())
    assert cache.consume("t1", "c1", 1, "bulk") == (True, 99, "ok")
    assert cache.check("t1", "c1", 1, "export") == (True, 98, "ok")
    assert cache.consume("t1", "c1", 1, "sso") == NO_ENTITLEMENT
    assert cache.check("t1", "c1", feature="sso") == NO_ENTITLEMENT
    assert cache.consume("t1", "c1") == (True, 98, "ok")  # no feature named: not gated
    assert cache.drain_usage() == {("t1", "c1"): 2}


def test_has_answers_boolean_features_for_served_customers_only() -> None:
    cache = cache_with(quota(features=("bulk",)), Clock())
    assert cache.has("t1", "c1", "bulk")
    assert not cache.has("t1", "c1", "sso")
    assert not cache.has("t1", "nobody", "bulk")
    cache.apply(quota(2, features=("bulk",), used=100, status="exhausted"))
    assert cache.has("t1", "c1", "bulk")  # out of units, still entitled
    cache.apply(quota(3, features=("bulk",), status="blocked"))
    assert not cache.has("t1", "c1", "bulk")
    cache.apply(quota(4, features=("bulk",), status="grace", grace_until=4000.0))
    assert not cache.has("t1", "c1", "bulk")  # the wall clock (5000) is past the grace
    cache.apply(quota(5, features=("bulk",)))
    cache.set_tenant_state("t1", "suspended")
    assert not cache.has("t1", "c1", "bulk")


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        (quota(status="blocked", rate=1, features=("bulk",)), BLOCKED),
        (quota(status="exhausted", used=100, rate=1), EXHAUSTED),
        (quota(status="grace", grace_until=4000.0, rate=1), GRACE_ENDED),
        (quota(rate=1, features=("other",)), NO_ENTITLEMENT),
        (quota(used=100, rate=1, features=("bulk",)), EXHAUSTED),
        (quota(used=98, rate=1, features=("bulk",)), Decision(False, 1, "insufficient")),
    ],
    ids=["blocked", "status-exhausted", "grace-ended", "no-entitlement", "exhausted", "insuff"],
)
def test_denials_that_waiting_does_not_cure_come_before_rate_limited(
    update: QuotaUpdate, expected: Decision
) -> None:
    cache = cache_with(update.model_copy(update={"version": 1}), Clock())
    # Empty the bucket first (a call that passes everything else), then deny for real.
    free = quota(2, limit=None, rate=1, features=("bulk", "other"))
    cache.apply(free)
    assert cache.consume("t1", "c1").allowed
    assert cache.consume("t1", "c1", 2, "bulk").reason == "rate_limited"
    cache.apply(update.model_copy(update={"version": 3}))
    assert cache.consume("t1", "c1", 2, "bulk") == expected
    assert cache.check("t1", "c1", 2, "bulk") == expected


def test_a_suspended_tenant_comes_before_everything() -> None:
    cache = cache_with(quota(rate=1, features=("other",), used=100), Clock())
    cache.set_tenant_state("t1", "suspended")
    assert cache.consume("t1", "c1", 1, "bulk").reason == "tenant_suspended"
