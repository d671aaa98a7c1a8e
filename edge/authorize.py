"""Forward auth for gateways: `/v1/authorize` (any method), the subrequest that NGINX
`auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth` and Envoy `ext_authz` (HTTP)
send before they let a request through.

The gateway authenticates itself with the edge application token (`Authorization: Bearer
…`, set in the gateway's configuration; or no token from loopback when
`QUOTAFLOW_EDGE_ALLOW_LOOPBACK` is on) and forwards the original request's headers. The
original request is read from, first match wins:
- target: `X-Forwarded-Uri` (Caddy, Traefik), `X-Original-URI` (NGINX), else the path
  after `/v1/authorize` (Envoy's `path_prefix`), else `/`;
- method: `X-Forwarded-Method`, `X-Original-Method`, else the subrequest's own method.
The gateway must set these itself (the snippets in `deploy/gateways/` do), so a caller's
own copy of them cannot pick a cheaper route.

The request is identified and priced by `edge/identify.py`, consumed, and answered by
`edge/verdict.py` (200 with `X-Quota-Remaining`/`RateLimit-Remaining`, or 429/403/503 with
a JSON reason and `Retry-After`; 401 when it names no customer). An `Idempotency-Key` on
the original request (forwarded with its headers) makes a retried call count once: the
first verdict again, with `Idempotent-Replayed: true`.
"""

from __future__ import annotations

from aiohttp import web

from edge.cache import QuotaCache
from edge.idempotency import IdempotencyCache, KeyReused, valid_key
from edge.identify import Ask, HeaderGetter, Identifier, IdentifyError
from edge.verdict import Gate, Verdict, identify_refusal, verdict

__all__ = ["PREFIX", "Authorizer", "original_request", "original_target", "respond"]

PREFIX = "/v1/authorize"
# Idempotency keys of forward-auth live apart from consume's: the answers differ in kind.
_SCOPE = "authorize:"


def original_request(request: web.Request) -> tuple[str, str]:
    """(method, target) of the request the gateway asks about."""
    return original_target(request.method, request.raw_path, request.headers.get)


def original_target(method: str, raw_path: str, header: HeaderGetter) -> tuple[str, str]:
    """(method, target) of the original request, from the subrequest's own method, raw
    target and headers (the forms both HTTP faces of the edge hold)."""
    target = header("X-Forwarded-Uri") or header("X-Original-URI")
    if not target:
        path, _, query = raw_path.partition("?")
        tail = path[len(PREFIX) :]
        target = (tail or "/") + (f"?{query}" if query else "")
    method = header("X-Forwarded-Method") or header("X-Original-Method") or method
    return method.upper(), target


def _encode(v: Verdict) -> bytes:
    """A verdict as the idempotency cache holds it (status, headers, body)."""
    head = "\n".join(f"{k}:{val}" for k, val in v.headers)
    return f"{v.status}\n{v.reason}\n{head}".encode() + b"\0" + v.body


def _decode(raw: bytes) -> Verdict:
    head, _, body = raw.partition(b"\0")
    status, reason, *lines = head.decode().split("\n")
    headers = tuple((k, val) for k, _, val in (line.partition(":") for line in lines if line))
    return Verdict(int(status), headers, body, reason)


class Authorizer:
    """Answers forward-auth requests from the cache; counts nothing it refuses."""

    def __init__(
        self,
        cache: QuotaCache,
        identifier: Identifier,
        idempotency: IdempotencyCache,
        *,
        retry_after: float = 1.0,
    ) -> None:
        self.cache = cache
        self.gate = Gate(cache)
        self.identifier = identifier
        self.idempotency = idempotency
        self.retry_after = retry_after

    def decide(self, app: str, request: web.Request) -> tuple[Verdict, bool]:
        """The verdict for `request` from application `app`, and whether it is a replay."""
        return self.decide_raw(app, request.method, request.raw_path, request.headers.get)

    def decide_raw(
        self, app: str, method: str, raw_path: str, header: HeaderGetter
    ) -> tuple[Verdict, bool]:
        """The verdict for a subrequest (its method, raw target and a case-insensitive
        header getter) from application `app`, and whether it is a replay.

        Synchronous from lookup to store: two concurrent retries under one key cannot
        both count."""
        method, target = original_target(method, raw_path, header)
        try:
            ask = self.identifier.identify(method, target, header)
        except IdentifyError as exc:
            return identify_refusal(exc.reason), False
        key = header("Idempotency-Key")
        if key is None:
            return self._answer(ask), False
        if not valid_key(key):
            return identify_refusal_400("bad_idempotency_key"), False
        asked = (ask.tenant, ask.customer, ask.cost, ask.feature)
        try:
            first = self.idempotency.lookup(_SCOPE + app, key, asked)
        except KeyReused:
            return identify_refusal_400("idempotency_key_reused", 422), False
        if first is not None:
            return _decode(first), True
        answer = self._answer(ask)
        if answer.reason != "rate_limited":  # a rate-limited retry is decided afresh
            self.idempotency.store(_SCOPE + app, key, asked, _encode(answer))
        return answer, False

    def _answer(self, ask: Ask) -> Verdict:
        return verdict(
            self.gate.consume(ask), ask, self.cache, unavailable_retry_after=self.retry_after
        )


def identify_refusal_400(reason: str, status: int = 400) -> Verdict:
    """A malformed forward-auth request (its Idempotency-Key)."""
    refused = identify_refusal(reason)
    return Verdict(status, refused.headers, refused.body, reason)


def respond(v: Verdict, *, replayed: bool = False) -> web.Response:
    """The aiohttp response for a verdict."""
    resp = web.Response(status=v.status, body=v.body or None)
    for name, value in v.headers:
        resp.headers[name] = value
    if v.body:
        resp.content_type = "application/json"
    if replayed:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp
