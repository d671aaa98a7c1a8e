"""`check()` and `consume()` decide alike.

The two are written out separately in `edge/cache.py` (the hot path pays no shared helper
call), so nothing but this test keeps their rules the same: for any record (limits, used,
statuses, grace, rate limits, boolean and metered features) and any sequence of calls on a
moving clock, `check()` answers exactly what `consume()` then answers at the same instant:
allowed, reason, the units left after the call, and the retry hint.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.cache import QuotaCache
from tables.quota import FeatureQuota, QuotaUpdate
from tests.edge.factories import feature_quota, quota_update

FEATURES = (None, "bulk", "exports", "sso")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


limits = st.one_of(st.none(), st.integers(min_value=0, max_value=12))
rates = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 2.0, 10.0]))


@st.composite
def metered(draw: st.DrawFn) -> FeatureQuota:
    limit = draw(limits)
    used = draw(st.integers(min_value=0, max_value=15))
    return feature_quota(limit, used=used, rate=draw(rates))


@st.composite
def records(draw: st.DrawFn) -> QuotaUpdate:
    return quota_update(
        limit=draw(limits),
        used=draw(st.integers(min_value=0, max_value=15)),
        status=draw(st.sampled_from(["active", "grace", "exhausted", "blocked"])),
        rate=draw(rates),
        features=draw(st.sampled_from([(), ("bulk",)])),
        grace_until=draw(st.sampled_from([None, 500.0, 2000.0])),
        metered=draw(st.dictionaries(st.just("exports"), metered(), max_size=1)),
    )


calls = st.lists(
    st.tuples(
        st.sampled_from(FEATURES),
        st.integers(min_value=0, max_value=5),
        st.sampled_from([0.0, 0.0, 0.1, 0.4, 1.0]),  # seconds before the call
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=400, deadline=None)
@given(record=records(), sequence=calls)
def test_check_answers_what_consume_then_does(
    record: QuotaUpdate, sequence: list[tuple[str | None, int, float]]
) -> None:
    clock, wall = Clock(1000.0), Clock(1000.0)
    cache = QuotaCache(regions=("eu",), clock=clock, wall_clock=wall)
    assert cache.apply(record, "eu")
    for feature, cost, pause in sequence:
        clock.now += pause
        wall.now += pause
        asked = cache.check("t1", "c1", cost, feature)
        done = cache.consume("t1", "c1", cost, feature)
        assert (asked.allowed, asked.reason, asked.remaining) == (
            done.allowed,
            done.reason,
            done.remaining,
        ), (feature, cost)
        assert asked.retry_after == done.retry_after
