"""The hot routes' answers (`/v1/consume`, `/v1/check`, `/v1/authorize…`) as plain data,
from what a request carries once its headers and body are in hand.

Two faces serve these routes on one port: aiohttp's handlers (`edge/server.py`) and the
light HTTP/1.1 protocol (`edge/fastpath.py`) that answers them without aiohttp's request
and response objects. Both call these functions, so a caller gets the same status,
headers, JSON and connection handling whichever face parsed its request; only the
reading of the body (`edge/body.py` for aiohttp, a buffer for the light face) and the
writing of the answer differ.

Nothing here awaits: authentication, the cache decision, the idempotency lookup and
store run in one synchronous step (`edge/idempotency.py` relies on it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from edge.auth import BAD_CREDENTIAL, AuthError
from edge.cache import RATE_LIMITED, Decision
from edge.idempotency import KeyReused, valid_key
from edge.identify import HeaderGetter
from edge.verdict import REASON_HEADER
from edge.verdict import Headers as VerdictHeaders

if TYPE_CHECKING:
    from edge.server import EdgeState

__all__ = [
    "MAX_COST",
    "MAX_FEATURE_CHARS",
    "Answer",
    "Ask",
    "authenticate",
    "authorize",
    "check",
    "consume",
    "error",
    "parse_ask",
]

MAX_COST = 1_000_000_000
MAX_FEATURE_CHARS = 256
JSON = "application/json"

Ask = tuple[str, str, int, str | None]  # (tenant_id, customer_id, cost, feature)


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: `content_type` None for an empty body; `close` ends the connection
    after it (a refusal whose body, or whose caller, is not to be read further)."""

    status: int
    body: bytes
    content_type: str | None = JSON
    headers: VerdictHeaders = ()
    close: bool = False


def error(status: int, reason: str) -> Answer:
    return Answer(status, orjson.dumps({"error": {"reason": reason}}))


def _unauthorized(reason: str, *, reason_header: bool) -> Answer:
    # RFC 6750: the scheme to use; `invalid_token` when one was presented and is not good.
    challenge = 'Bearer realm="quotaflow-edge"'
    if reason == BAD_CREDENTIAL:
        challenge += ', error="invalid_token"'
    headers: VerdictHeaders = (("WWW-Authenticate", challenge),)
    if reason_header:
        # NGINX passes a 401 on without its body: the reason travels in a header too.
        headers += ((REASON_HEADER, reason),)
    # Refused before its body is read: no keep-alive past an unread body (nor for a caller
    # without a credential).
    return Answer(401, orjson.dumps({"error": {"reason": reason}}), headers=headers, close=True)


def authenticate(
    s: EdgeState, route: str, authorization: str | None, remote: Callable[[], str | None]
) -> str | Answer:
    """The calling application's name, or the 401 answer (counted by route and reason).

    `remote` gives the peer address; it is asked only when it can matter (no credential)."""
    try:
        return s.auth.authenticate(authorization, remote() if authorization is None else None)
    except AuthError as exc:
        s.metrics.auth_refusals.labels(route=route, reason=exc.reason).inc()
        return _unauthorized(exc.reason, reason_header=route == "authorize")


def parse_ask(raw: bytes) -> Ask | Answer:
    """The consume/check body, or the 400 answer that refuses it."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error(400, "bad_body")
    if not isinstance(doc, dict):
        return error(400, "bad_body")
    tenant, customer, cost = doc.get("tenant_id"), doc.get("customer_id"), doc.get("cost", 1)
    if not (isinstance(tenant, str) and tenant and isinstance(customer, str) and customer):
        return error(400, "bad_customer")
    if type(cost) is not int or not 0 <= cost <= MAX_COST:
        return error(400, "bad_cost")
    feature = doc.get("feature")
    if feature is not None and not (
        isinstance(feature, str) and 0 < len(feature) <= MAX_FEATURE_CHARS
    ):
        return error(400, "bad_feature")
    return tenant, customer, cost, feature


def _answer(decision: Decision) -> bytes:
    """The consume/check answer; `retry_after` only with `rate_limited` (in the body, not a
    `Retry-After` header: these routes answer 200 for every decision)."""
    allowed, remaining, reason = decision
    if reason == RATE_LIMITED:
        return orjson.dumps(
            {
                "allowed": allowed,
                "remaining": remaining,
                "reason": reason,
                "retry_after": decision.retry_after,
            }
        )
    return orjson.dumps({"allowed": allowed, "remaining": remaining, "reason": reason})


_REPLAYED: VerdictHeaders = (("Idempotent-Replayed", "true"),)


def consume(s: EdgeState, app: str, raw: bytes, key: str | None) -> Answer:
    """Allows and counts a call, or denies it: the Rating node's one question."""
    ask = parse_ask(raw)
    if isinstance(ask, Answer):
        return ask
    if key is None:  # the hot path: nothing to remember
        decision = s.cache.consume(*ask)
        s.metrics.decision(app, decision.reason).inc()
        return Answer(200, _answer(decision))
    if not valid_key(key):
        return error(400, "bad_idempotency_key")
    # From here to the store nothing awaits: a concurrent request with the same key runs
    # after this one stored its answer, and replays it.
    try:
        first = s.idempotency.lookup(app, key, ask)
    except KeyReused:
        s.metrics.idempotency.labels(app=app, outcome="reused").inc()
        return error(422, "idempotency_key_reused")
    if first is not None:
        s.metrics.idempotency.labels(app=app, outcome="replayed").inc()
        return Answer(200, first, headers=_REPLAYED)
    decision = s.cache.consume(*ask)
    s.metrics.decision(app, decision.reason).inc()
    answer = _answer(decision)
    if decision.reason != RATE_LIMITED:
        # A rate-limited call counted nothing and invites a retry after `retry_after`:
        # replaying this denial to that retry would refuse it for the key's whole life.
        s.idempotency.store(app, key, ask, answer)
    return Answer(200, answer)


def check(s: EdgeState, app: str, raw: bytes) -> Answer:
    """Would this call be allowed now? The consume question, counting nothing."""
    ask = parse_ask(raw)
    if isinstance(ask, Answer):
        return ask
    decision = s.cache.check(*ask)
    s.metrics.check(app, decision.reason).inc()
    return Answer(200, _answer(decision))


def authorize(s: EdgeState, app: str, method: str, raw_path: str, header: HeaderGetter) -> Answer:
    """Forward auth: may the gateway let the original request through? Counts it if so."""
    v, replayed = s.authorizer.decide_raw(app, method, raw_path, header)
    s.metrics.authorization(app, v.reason).inc()
    headers = v.headers + _REPLAYED if replayed else v.headers
    return Answer(v.status, v.body, JSON if v.body else None, headers)
