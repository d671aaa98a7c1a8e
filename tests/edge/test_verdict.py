"""Every cache decision maps to one HTTP answer, shared by forward auth and the middleware."""

from __future__ import annotations

import orjson
import pytest

from edge.cache import (
    BLOCKED,
    EXHAUSTED,
    GRACE_ENDED,
    NO_ENTITLEMENT,
    NO_SNAPSHOT,
    REMOVED,
    STALE,
    SUSPENDED,
    UNKNOWN,
    Decision,
    QuotaCache,
)
from edge.identify import Ask
from edge.verdict import verdict

ASK = Ask("t1", "c1", None, 1)


@pytest.mark.parametrize(
    ("decision", "status"),
    [
        (BLOCKED, 403),
        (NO_ENTITLEMENT, 403),
        (SUSPENDED, 403),
        (REMOVED, 403),
        (GRACE_ENDED, 403),
        (UNKNOWN, 403),
        (EXHAUSTED, 429),
        (Decision(False, 3, "insufficient"), 429),
        (NO_SNAPSHOT, 503),
        (STALE, 503),
        (Decision(False, None, "a_reason_added_later"), 403),
    ],
)
def test_each_denial_has_its_status_and_json_reason(decision: Decision, status: int) -> None:
    answer = verdict(decision, ASK, QuotaCache(), unavailable_retry_after=2.5)
    assert answer.status == status
    assert not answer.allowed
    doc = orjson.loads(answer.body)
    assert doc["error"]["reason"] == decision.reason
    headers = dict(answer.headers)
    assert headers["X-Quota-Reason"] == decision.reason
    if status == 503:
        assert headers["Retry-After"] == "3"  # whole seconds, rounded up
        assert doc["error"]["retry_after"] == 3


def test_an_allowed_call_says_what_is_left_unless_unlimited() -> None:
    limited = verdict(Decision(True, 7, "ok"), ASK, QuotaCache())
    assert (limited.status, limited.body) == (200, b"")
    assert dict(limited.headers) == {"X-Quota-Remaining": "7", "RateLimit-Remaining": "7"}
    unlimited = verdict(Decision(True, None, "ok"), ASK, QuotaCache())
    assert (unlimited.status, unlimited.headers) == (200, ())
