"""The quota cache: version ordering, check/consume, unknown customers, usage, staleness."""

from __future__ import annotations

import pytest

from edge.cache import (
    BLOCKED,
    EXHAUSTED,
    NO_SNAPSHOT,
    STALE,
    UNKNOWN,
    UNLIMITED,
    Decision,
    QuotaCache,
)
from tables.quota import QuotaStatus, QuotaUpdate, Reason
from tests.edge.factories import quota_update


def quota(
    version: int,
    *,
    limit: int | None = 10,
    used: int = 0,
    status: QuotaStatus = "active",
    tenant: str = "t1",
    customer: str = "c1",
) -> QuotaUpdate:
    return quota_update(
        version, tenant=tenant, customer=customer, limit=limit, used=used, status=status
    )


def test_applies_only_newer_versions() -> None:
    cache = QuotaCache()
    assert cache.apply(quota(2, limit=20))
    assert not cache.apply(quota(1, limit=5))
    assert not cache.apply(quota(2, limit=5))
    assert cache.version("t1", "c1") == 2
    assert cache.check("t1", "c1").remaining == 19
    assert cache.apply(quota(3, limit=5))
    assert cache.check("t1", "c1", 5) == Decision(True, 0, "ok")


def test_unknown_customer_is_denied() -> None:
    cache = QuotaCache()
    cache.apply(quota(1))
    assert cache.check("t1", "nobody") == UNKNOWN
    assert cache.consume("other-tenant", "c1") == UNKNOWN
    assert cache.get("t1", "nobody") is None


def test_a_cache_waiting_for_its_snapshot_says_so_for_unknown_customers() -> None:
    cache = QuotaCache(complete=False)
    cache.apply(quota(1))
    assert cache.consume("t1", "nobody") == NO_SNAPSHOT
    assert cache.check("t1", "nobody") == NO_SNAPSHOT
    assert cache.consume("t1", "c1").allowed  # a known customer is served meanwhile
    waiting = cache.complete
    cache.mark_complete()
    assert (waiting, cache.complete) == (False, True)
    assert cache.consume("t1", "nobody") == UNKNOWN


def test_check_counts_nothing_and_consume_counts() -> None:
    cache = QuotaCache()
    cache.apply(quota(1, limit=3))
    assert cache.check("t1", "c1") == (True, 2, "ok")
    assert cache.check("t1", "c1") == (True, 2, "ok")
    assert cache.consume("t1", "c1", 2) == (True, 1, "ok")
    assert cache.check("t1", "c1", 2) == (False, 1, "insufficient")
    assert cache.consume("t1", "c1", 2) == (False, 1, "insufficient")
    assert cache.consume("t1", "c1") == (True, 0, "ok")
    assert cache.consume("t1", "c1") == EXHAUSTED
    doc = cache.get("t1", "c1")
    assert doc is not None
    assert (doc["used"], doc["remaining"], doc["status"]) == (3, 0, "exhausted")


def test_blocked_and_exhausted_statuses_deny() -> None:
    cache = QuotaCache()
    cache.apply(quota(1, status="blocked"))
    cache.apply(quota(1, customer="c2", status="exhausted", used=10))
    assert cache.consume("t1", "c1") == BLOCKED
    assert cache.check("t1", "c2") == EXHAUSTED


def test_unlimited_allows_and_still_counts_usage() -> None:
    cache = QuotaCache()
    cache.apply(quota(1, limit=None))
    assert cache.consume("t1", "c1", 7) == UNLIMITED
    assert cache.drain_usage() == {("t1", "c1"): 7}


def test_negative_cost_is_an_error() -> None:
    cache = QuotaCache()
    cache.apply(quota(1))
    with pytest.raises(ValueError, match="cost"):
        cache.consume("t1", "c1", -1)


def test_drain_usage_returns_and_resets_pending() -> None:
    cache = QuotaCache()
    cache.apply(quota(1))
    cache.apply(quota(1, customer="c2"))
    cache.consume("t1", "c1", 2)
    cache.consume("t1", "c2")
    assert cache.drain_usage() == {("t1", "c1"): 2, ("t1", "c2"): 1}
    assert cache.drain_usage() == {}


def test_a_push_keeps_unreported_local_usage() -> None:
    cache = QuotaCache()
    cache.apply(quota(1, limit=10))
    cache.consume("t1", "c1", 4)
    cache.apply(quota(2, limit=10, used=1))  # core saw 1 unit from elsewhere
    assert cache.check("t1", "c1", 0).remaining == 5
    doc = cache.get("t1", "c1")
    assert doc is not None
    assert (doc["used"], doc["pending_usage"]) == (5, 4)


def test_state_age_is_tracked_per_region() -> None:
    now = [100.0]
    cache = QuotaCache(regions=("eu",), clock=lambda: now[0])
    now[0] = 105.0
    assert cache.state_age_seconds() == {"eu": 5.0}
    cache.touch("eu")
    now[0] = 106.5
    assert cache.state_age_seconds() == {"eu": 1.5}


def test_stale_state_fails_closed_or_open_per_tenant() -> None:
    now = [0.0]
    cache = QuotaCache(
        regions=("eu",), stale_after=10.0, fail_open=lambda t: t == "rate", clock=lambda: now[0]
    )
    cache.apply(quota(1, tenant="money"), "eu")
    cache.apply(quota(1, tenant="rate"), "eu")
    cache.touch("eu")
    assert cache.consume("money", "c1").allowed
    now[0] = 11.0
    assert cache.consume("money", "c1") == STALE
    assert cache.consume("rate", "c1").allowed
    cache.touch("eu")
    assert cache.consume("money", "c1").allowed


def test_a_customer_in_grace_is_denied_once_the_published_deadline_passes() -> None:
    from edge.cache import QuotaCache
    from tables.quota import QuotaUpdate

    now = [1_000.0]
    cache = QuotaCache(wall_clock=lambda: now[0])
    cache.apply(
        QuotaUpdate(
            tenant_id="acme",
            customer_id="cus_1",
            limit=10,
            used=0,
            remaining=10,
            status="grace",
            version=1,
            reason=Reason(kind="stripe_event", id="evt_1"),
            updated_at=now[0],
            grace_until=1_060.0,
        )
    )
    assert cache.consume("acme", "cus_1").allowed
    now[0] = 1_060.0
    decision = cache.check("acme", "cus_1")
    assert (decision.allowed, decision.reason) == (False, "grace_ended")
    assert not cache.consume("acme", "cus_1").allowed
