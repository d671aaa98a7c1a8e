"""Named metered features at the cache: each its own quota, local count and token bucket;
boolean features spend the default quota; denials say why."""

from __future__ import annotations

from pathlib import Path

from edge.cache import EXHAUSTED, NO_ENTITLEMENT, QuotaCache, RateLimited
from edge.identify import Ask
from edge.spool import UsageSpool
from edge.verdict import verdict
from tables.quota import QuotaUpdate
from tests.edge.factories import feature_quota, quota_update


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(version: int = 1, **fields: object) -> QuotaUpdate:
    base: dict[str, object] = {
        "limit": 100,
        "features": ("bulk",),
        "rate": 50.0,
        "metered": {
            "exports": feature_quota(10, used=4, rate=2.0),
            "seats": feature_quota(None),
        },
    }
    return quota_update(version, **(base | fields))  # type: ignore[arg-type]


def cache_of(update: QuotaUpdate, clock: Clock | None = None) -> QuotaCache:
    cache = QuotaCache(clock=clock or Clock(), wall_clock=lambda: 5000.0)
    assert cache.apply(update)
    return cache


def test_a_metered_feature_spends_its_own_quota_not_the_default() -> None:
    cache = cache_of(record())
    assert tuple(cache.consume("t1", "c1", 5, "exports")) == (True, 1, "ok")
    assert tuple(cache.consume("t1", "c1", 2, "exports")) == (False, 1, "insufficient")
    assert tuple(cache.consume("t1", "c1", 1, "exports")) == (True, 0, "ok")
    assert cache.check("t1", "c1", 1, "exports") == EXHAUSTED
    # The default quota and a boolean feature (which spends the default) are untouched.
    assert tuple(cache.consume("t1", "c1", 3)) == (True, 97, "ok")
    assert tuple(cache.consume("t1", "c1", 3, "bulk")) == (True, 94, "ok")
    assert tuple(cache.consume("t1", "c1", 10**6, "seats")) == (True, None, "ok")


def test_a_feature_the_record_does_not_grant_is_no_entitlement() -> None:
    cache = cache_of(record())
    assert cache.consume("t1", "c1", 1, "sso") == NO_ENTITLEMENT
    assert cache.check("t1", "c1", 1, "sso") == NO_ENTITLEMENT
    assert cache.drain_usage() == {}


def test_rate_limits_are_per_customer_and_feature() -> None:
    clock = Clock()
    cache = cache_of(record(), clock)
    assert [cache.consume("t1", "c1", 1, "exports").allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]
    limited = cache.consume("t1", "c1", 1, "exports")
    assert isinstance(limited, RateLimited)
    assert limited.reason == "rate_limited"
    assert limited.retry_after == 0.5
    # The default bucket (50/s) and the other features are not affected.
    assert cache.consume("t1", "c1", 1).allowed
    assert cache.consume("t1", "c1", 1, "seats").allowed
    clock.now += 0.5
    assert cache.consume("t1", "c1", 1, "exports").allowed


def test_exhausting_the_default_quota_leaves_the_metered_features() -> None:
    cache = cache_of(record(used=100, status="exhausted"))
    assert cache.consume("t1", "c1", 1) == EXHAUSTED
    assert cache.consume("t1", "c1", 1, "bulk") == EXHAUSTED
    assert cache.consume("t1", "c1", 1, "exports").allowed
    assert cache.has("t1", "c1", "bulk")
    assert cache.has("t1", "c1", "exports")


def test_blocked_suspended_and_grace_ended_deny_every_feature() -> None:
    blocked = cache_of(record(status="blocked"))
    assert blocked.consume("t1", "c1", 1, "exports").reason == "blocked"
    assert not blocked.has("t1", "c1", "exports")
    suspended = cache_of(record())
    suspended.set_tenant_state("t1", "suspended")
    assert suspended.consume("t1", "c1", 1, "seats").reason == "tenant_suspended"
    suspended.set_tenant_state("t1", "active")
    assert suspended.consume("t1", "c1", 1, "seats").allowed
    ended = cache_of(record(status="grace", grace_until=4000.0))
    assert ended.consume("t1", "c1", 1, "exports").reason == "grace_ended"


def test_usage_drains_per_feature_and_a_push_keeps_pending_and_bucket() -> None:
    clock = Clock()
    cache = cache_of(record(), clock)
    cache.consume("t1", "c1", 2, "exports")
    cache.consume("t1", "c1", 1, "exports")
    cache.consume("t1", "c1", 7)
    cache.consume("t1", "c1", 4, "bulk")
    # A newer record before the drain: the pending units stay counted against it, and the
    # exports bucket (2 tokens spent) is not refilled.
    assert cache.apply(record(2))
    assert tuple(cache.check("t1", "c1", 4, "exports")) == (False, 3, "insufficient")
    assert cache.check("t1", "c1", 1, "exports").reason == "rate_limited"
    doc = cache.get("t1", "c1")
    assert doc is not None
    assert (doc["metered"]["exports"]["used"], doc["metered"]["exports"]["remaining"]) == (7, 3)
    assert cache.drain_usage() == {("t1", "c1"): 11, ("t1", "c1", "exports"): 3}
    assert cache.drain_usage() == {}


def test_a_removed_tenants_feature_usage_stays_drainable() -> None:
    cache = cache_of(record())
    cache.consume("t1", "c1", 2, "seats")
    cache.set_tenant_state("t1", "removed")
    assert cache.drain_usage() == {("t1", "c1", "seats"): 2}


def test_the_spool_keeps_feature_items_and_reads_an_old_spool(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path)
    spool.load()
    spool.seal({("t1", "c1"): 3, ("t1", "c1", "exports"): 2})
    (tmp_path / "batch-00000000000000000002.json").write_bytes(
        b'{"seq": 2, "items": [["t1", "c2", 5]]}'
    )
    again = UsageSpool(tmp_path)
    again.load()
    head = again.head()
    assert head is not None
    assert head.items == {("t1", "c1"): 3, ("t1", "c1", "exports"): 2}
    tail = again.tail()
    assert tail is not None
    assert tail.items == {("t1", "c2"): 5}


def test_an_exhausted_feature_answers_with_its_own_limit_over_http() -> None:
    cache = cache_of(record(limit=100))
    ask = Ask("t1", "c1", "exports", 7)
    decision = cache.consume(ask.tenant, ask.customer, ask.cost, ask.feature)
    answer = verdict(decision, ask, cache)
    assert (answer.status, answer.reason) == (429, "insufficient")
    headers = dict(answer.headers)
    assert (headers["RateLimit-Limit"], headers["X-Quota-Remaining"]) == ("10", "6")


def test_units_of_a_feature_a_new_record_drops_are_still_reported() -> None:
    cache = cache_of(record())
    cache.consume("t1", "c1", 3, "exports")
    cache.consume("t1", "c1", 1, "seats")
    assert cache.apply(record(2, metered={"seats": feature_quota(None)}))
    assert cache.consume("t1", "c1", 1, "exports") == NO_ENTITLEMENT
    assert cache.drain_usage() == {("t1", "c1", "exports"): 3, ("t1", "c1", "seats"): 1}
