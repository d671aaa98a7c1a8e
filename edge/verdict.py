"""From a cache decision to an HTTP answer: the status, headers and JSON body that the
forward-auth route and the ASGI middleware both give, so a gateway and a Python service
tell a caller the same thing.

- `ok`: 200, empty body, `X-Quota-Remaining` and `RateLimit-Remaining` (absent when
  unlimited).
- `rate_limited`: 429, `Retry-After` (the cache's hint, rounded up, at least 1 s).
- `exhausted`, `insufficient`: 429, `X-Quota-Remaining`, `RateLimit-Limit`, `-Remaining`,
  `-Reset` and `Retry-After` until the period ends, when the record has one.
- `blocked`, `no_entitlement`, `tenant_suspended`, `tenant_removed`, `grace_ended`,
  `unknown_customer`: 403.
- `no_snapshot`, `stale_state`: 503, `Retry-After` (`QUOTAFLOW_EDGE_AUTHORIZE_RETRY_AFTER`).
- any other reason (one added later): 403, failing closed.

`unknown_customer` is 403, not 401: the caller was identified (its headers or its API key
were accepted), this node simply holds no quota for it, and presenting credentials again
would not change that. 401 is kept for requests that identify nobody (`missing_identity`,
`missing_api_key`, `unknown_api_key`) and for a gateway without a valid edge credential.

Allowed answers are 200 rather than 204: Envoy's ext_authz (HTTP) allows only on 200.
Every denial carries `{"error": {"reason": …}}` (plus `retry_after` in seconds when there
is one) and the reason in `X-Quota-Reason`, from which NGINX, which cannot pass on an
auth subrequest's body, renders the same JSON.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from edge.cache import Decision, QuotaCache
from edge.identify import Ask

__all__ = ["REASON_HEADER", "REMAINING_HEADER", "Gate", "Verdict", "identify_refusal", "verdict"]

REASON_HEADER = "X-Quota-Reason"
REMAINING_HEADER = "X-Quota-Remaining"
_TOO_MANY = frozenset({"rate_limited", "exhausted", "insufficient"})
_UNAVAILABLE = frozenset({"no_snapshot", "stale_state"})
_QUOTA = frozenset({"exhausted", "insufficient"})
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    """An HTTP answer to a quota question."""

    status: int
    headers: Headers
    body: bytes
    reason: str

    @property
    def allowed(self) -> bool:
        return self.status == 200


class Gate:
    """`consume`/`check` of an `Ask` against a cache, the route's feature included (a
    customer whose record lacks it is denied `no_entitlement`)."""

    def __init__(self, cache: QuotaCache) -> None:
        self.cache = cache

    def consume(self, ask: Ask) -> Decision:
        return self.cache.consume(ask.tenant, ask.customer, ask.cost, ask.feature)

    def check(self, ask: Ask) -> Decision:
        return self.cache.check(ask.tenant, ask.customer, ask.cost, ask.feature)


def _seconds(value: float) -> str:
    return str(max(1, math.ceil(value)))


def _denial(status: int, reason: str, headers: list[tuple[str, str]], retry: str | None) -> Verdict:
    error: dict[str, object] = {"reason": reason}
    if retry is not None:
        headers.append(("Retry-After", retry))
        error["retry_after"] = int(retry)
    headers.append((REASON_HEADER, reason))
    return Verdict(status, tuple(headers), orjson.dumps({"error": error}), reason)


def verdict(
    decision: Decision,
    ask: Ask,
    cache: QuotaCache,
    *,
    unavailable_retry_after: float = 1.0,
    wall_clock: Callable[[], float] = time.time,
) -> Verdict:
    """The answer to `decision` (taken for `ask` from `cache`)."""
    allowed, remaining, reason = decision
    if allowed:
        if remaining is None:
            return Verdict(200, (), b"", reason)
        left = str(remaining)
        return Verdict(200, ((REMAINING_HEADER, left), ("RateLimit-Remaining", left)), b"", reason)
    if reason == "rate_limited":
        hint = decision.retry_after
        retry = None if hint is None else _seconds(hint)
        return _denial(429, reason, [], retry)
    if reason in _QUOTA:
        # The deny path only: the record's limit and period end cost a lookup here.
        headers: list[tuple[str, str]] = [(REMAINING_HEADER, str(max(remaining or 0, 0)))]
        doc = cache.get(ask.tenant, ask.customer)
        retry = None
        if doc is not None:
            # The quota the call spent: a named metered feature's own, else the default.
            metered = doc.get("metered") or {}
            quota = metered.get(ask.feature, doc) if ask.feature is not None else doc
            if quota.get("limit") is not None:
                headers.append(("RateLimit-Limit", str(quota["limit"])))
            headers.append(("RateLimit-Remaining", str(max(remaining or 0, 0))))
            end = doc.get("period_end")
            if isinstance(end, int | float):
                retry = _seconds(end - wall_clock())
                headers.append(("RateLimit-Reset", retry))
        return _denial(429, reason, headers, retry)
    if reason in _TOO_MANY:
        return _denial(429, reason, [], None)
    if reason in _UNAVAILABLE:
        return _denial(503, reason, [], _seconds(unavailable_retry_after))
    return _denial(403, reason, [], None)


def identify_refusal(reason: str) -> Verdict:
    """The 401 for a request that identifies no customer."""
    return _denial(401, reason, [], None)
