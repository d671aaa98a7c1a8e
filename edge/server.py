"""The edge sidecar's HTTP face (aiohttp), for the pusher and for Rating nodes in other
languages. Everything is answered from the in-process `QuotaCache`.

Routes:
- `POST /v1/push` (signed; the pusher): `{"region", "updates": [QuotaUpdate...],
  "snapshot": {"id", "final"} | null, "tenants": {tenant_id: "active" | "suspended" |
  "removed"}, "tenants_complete": bool}` (tenant states: see `PushBody`) →
  `{"applied", "stale", "invalid", "boot_id", "snapshot"}`. `boot_id` names this process
  (random, new at every start) and `snapshot` says whether it holds a complete snapshot:
  a pusher that sees a boot id change, or a node without a snapshot, re-joins it with a
  snapshot at once (a restarted node would otherwise accept heartbeats and stay empty).
  The signature
  is verified on the raw bytes before anything is parsed: 401 `{"error": {"reason"}}` and
  nothing changes. A malformed body is 400; a single malformed update is counted as
  `invalid` and the others still apply (one bad record must not wedge the pusher).
- `GET /v1/quotas/{tenant_id}/{customer_id}` (an application's credential): the quota with
  local consumption; 404 `unknown_customer`.
- `POST /v1/consume` (an application's credential) `{"tenant_id", "customer_id", "cost",
  "feature"?}` → `{"allowed", "remaining", "reason"}`, plus `"retry_after"` (seconds) with
  reason `rate_limited` (200 for every decision; 400 for a malformed request). A call
  naming a `feature` the customer's record lacks is `no_entitlement`. Until the first
  complete snapshot, a customer the node does not know is denied with `no_snapshot`. An
  `Idempotency-Key` header makes a retry count once (`edge/idempotency.py`): the first
  answer again, or 422 `idempotency_key_reused` for another request under the same key; a
  `rate_limited` answer is not kept (its retry is meant to be decided afresh).
- `POST /v1/check` (an application's credential): the same body and answer as consume,
  counting nothing and spending no rate token.
- `/v1/authorize` and `/v1/authorize/{path}`, any method (an application's credential: the
  gateway's): forward auth for NGINX, Caddy, Traefik and Envoy (`edge/authorize.py`):
  identifies, prices and consumes the original request, answers 200 or 401/403/429/503.
- `GET /healthz` (with the boot id), `GET /readyz` (ready once a final snapshot batch
  arrived), `GET /metrics`: open, they say nothing about any customer.

Applications authenticate with a bearer token (`edge/auth.py`) before anything else is
done, the body included: 401 `missing_credential` / `bad_credential` with
`WWW-Authenticate: Bearer`. Every body has a size limit per route and a read timeout
(`edge/body.py`: 413 `body_too_large`, 408 `body_timeout`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edge import answers
from edge.announcer import NodeAnnouncer
from edge.answers import Answer
from edge.auth import AppAuth
from edge.authorize import PREFIX as AUTHORIZE_PREFIX
from edge.authorize import Authorizer
from edge.body import BodyLimits, BodyRefused, read_body
from edge.cache import QuotaCache
from edge.fastpath import EdgeRunner
from edge.idempotency import IdempotencyCache
from edge.identify import Identifier, identifier_from_settings
from edge.metrics import EdgeMetrics
from edge.reporter import UsageReporter
from edge.settings import EdgeSettings
from tables.quota import QuotaUpdate
from tables.tenant import TENANT_ID_PATTERN
from wire import SIGNATURE_HEADER, Kind, SignatureError, Verifier

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"

CACHE_KEY = web.AppKey("cache", QuotaCache)


class SnapshotMark(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(..., min_length=1, max_length=128)
    final: bool


TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID_PATTERN)]


class PushBody(BaseModel):
    """The push envelope; updates are validated one by one so one bad record is isolated.

    `tenants` carries tenant states (`active`, `suspended`, `removed`), applied before the
    updates of the same push: only what the push names changes, unless `tenants_complete`
    (a snapshot's first batch), which lists every tenant of the region, so a tenant held
    here and absent from it is removed. Only a verified push reaches this model."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    region: str = Field(..., min_length=1, max_length=64)
    updates: list[dict[str, Any]]
    snapshot: SnapshotMark | None = None
    push_id: str | None = Field(None, max_length=128)
    tenants: dict[TenantId, Literal["active", "suspended", "removed"]] = Field(default_factory=dict)
    tenants_complete: bool = False


class EdgeState:
    """What the handlers share besides the cache."""

    def __init__(
        self,
        cache: QuotaCache,
        verifier: Verifier,
        region: str,
        *,
        auth: AppAuth,
        limits: BodyLimits,
        idempotency: IdempotencyCache,
        authorizer: Authorizer,
    ) -> None:
        self.cache = cache
        self.authorizer = authorizer
        self.verifier = verifier
        self.region = region
        self.auth = auth
        self.limits = limits
        self.idempotency = idempotency
        self.metrics = EdgeMetrics(cache)
        self.ready = False
        self.snapshots_completed = 0
        # New at every start: tells a pusher this process lost whatever an earlier one held.
        self.boot_id = uuid.uuid4().hex
        cache.expect_snapshot()


STATE_KEY = web.AppKey("state", EdgeState)


def _error(status: int, reason: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": {"reason": reason}}),
        content_type="application/json",
    )


def _json(doc: object) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


def _response(answer: Answer) -> web.Response:
    """aiohttp's response for an answer of the hot routes (`edge/answers.py`)."""
    resp = web.Response(
        status=answer.status, body=answer.body or None, content_type=answer.content_type
    )
    for name, value in answer.headers:
        resp.headers[name] = value
    if answer.close:
        resp.force_close()
    return resp


def _body_refused(exc: BodyRefused) -> web.Response:
    resp = _error(exc.status, exc.reason)
    resp.force_close()  # the rest of the body is never read: the connection cannot go on
    return resp


class _Handlers:
    def __init__(self, state: EdgeState) -> None:
        self.s = state

    async def push(self, request: web.Request) -> web.Response:
        """Applies a signed batch of quota updates from the region's pusher."""
        s = self.s
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            # The pusher never compresses; a compressed body is someone else's (a zip bomb).
            s.metrics.pushes.labels(outcome="bad_request").inc()
            return _error(415, "unsupported_encoding")
        try:
            body = await read_body(request, max_bytes=s.limits.push, timeout=s.limits.timeout)
        except BodyRefused as exc:
            s.metrics.pushes.labels(outcome="bad_request").inc()
            s.metrics.body_refusals.labels(route="push", reason=exc.reason).inc()
            return _body_refused(exc)
        try:
            s.verifier.verify(request.headers.get(SIGNATURE_HEADER), body)
        except SignatureError as exc:
            s.metrics.pushes.labels(outcome="rejected").inc()
            s.metrics.rejections.labels(reason=exc.reason).inc()
            log.warning("push refused", extra={"reason": exc.reason})
            return _error(401, exc.reason)
        try:
            push = PushBody.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            s.metrics.pushes.labels(outcome="bad_request").inc()
            return _error(400, "bad_body")
        if push.region != s.region:
            s.metrics.pushes.labels(outcome="bad_request").inc()
            return _error(400, "wrong_region")
        if push.tenants or push.tenants_complete:
            # Before the updates: an update of a tenant removed by this very push (queued
            # before the removal) must not bring its customers back.
            if push.tenants_complete:
                changed = s.cache.replace_tenant_states(push.tenants, push.region)
            else:
                changed = sum(s.cache.set_tenant_state(t, st) for t, st in push.tenants.items())
            if changed:
                s.metrics.tenant_changes.inc(changed)
                log.info(
                    "tenant states applied",
                    extra={"changed": changed, "complete": push.tenants_complete},
                )
        applied = stale = invalid = 0
        for raw in push.updates:
            try:
                update = QuotaUpdate.model_validate(raw)
            except ValidationError:
                invalid += 1
                continue
            if s.cache.apply(update, push.region):
                applied += 1
            else:
                stale += 1
        s.cache.touch(push.region)
        if push.snapshot is not None and push.snapshot.final:
            s.ready = True
            s.snapshots_completed += 1
            s.cache.mark_complete()
        m = s.metrics
        m.pushes.labels(outcome="accepted").inc()
        m.updates.labels(result="applied").inc(applied)
        m.updates.labels(result="stale").inc(stale)
        m.updates.labels(result="invalid").inc(invalid)
        return _json(
            {
                "applied": applied,
                "stale": stale,
                "invalid": invalid,
                "boot_id": s.boot_id,
                "snapshot": s.ready,
            }
        )

    def _app(self, request: web.Request, route: str) -> str | web.Response:
        """The calling application's name, or the 401 answer (counted by route and reason)."""
        app = answers.authenticate(
            self.s, route, request.headers.get("Authorization"), lambda: request.remote
        )
        return _response(app) if isinstance(app, Answer) else app

    async def _body(self, request: web.Request, route: str) -> bytes | web.Response:
        """The consume/check body read within its limits, or the refusal."""
        s = self.s
        try:
            return await read_body(request, max_bytes=s.limits.consume, timeout=s.limits.timeout)
        except BodyRefused as exc:
            s.metrics.body_refusals.labels(route=route, reason=exc.reason).inc()
            return _body_refused(exc)

    async def quota(self, request: web.Request) -> web.Response:
        """One customer's quota, local consumption included; 404 if unknown."""
        app = self._app(request, "quotas")
        if isinstance(app, web.Response):
            return app
        doc = self.s.cache.get(request.match_info["tenant_id"], request.match_info["customer_id"])
        if doc is None:
            self.s.metrics.quota_reads.labels(app=app, outcome="unknown").inc()
            return _error(404, "unknown_customer")
        self.s.metrics.quota_reads.labels(app=app, outcome="found").inc()
        return _json(doc)

    async def consume(self, request: web.Request) -> web.Response:
        """Allows and counts a call, or denies it: the Rating node's one question."""
        app = self._app(request, "consume")
        if isinstance(app, web.Response):
            return app
        raw = await self._body(request, "consume")
        if isinstance(raw, web.Response):
            return raw
        return _response(answers.consume(self.s, app, raw, request.headers.get(IDEMPOTENCY_HEADER)))

    async def check(self, request: web.Request) -> web.Response:
        """Would this call be allowed now? The consume question, counting nothing."""
        app = self._app(request, "check")
        if isinstance(app, web.Response):
            return app
        raw = await self._body(request, "check")
        if isinstance(raw, web.Response):
            return raw
        return _response(answers.check(self.s, app, raw))

    async def authorize(self, request: web.Request) -> web.Response:
        """Forward auth: may the gateway let the original request through? Counts it if so."""
        app = self._app(request, "authorize")
        if isinstance(app, web.Response):
            return app
        return _response(
            answers.authorize(self.s, app, request.method, request.raw_path, request.headers.get)
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "boot_id": self.s.boot_id})

    async def readyz(self, request: web.Request) -> web.Response:
        if not self.s.ready:
            return web.Response(
                status=503,
                body=orjson.dumps(
                    {"ready": False, "reason": "no_snapshot", "boot_id": self.s.boot_id}
                ),
                content_type="application/json",
            )
        return _json(
            {
                "ready": True,
                "boot_id": self.s.boot_id,
                "state_age_seconds": self.s.cache.state_age_seconds(),
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        self.s.metrics.idempotency_held.set(len(self.s.idempotency))
        return web.Response(
            body=self.s.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


def push_verifier(settings: EdgeSettings) -> Verifier:
    """Verifies pushes to this node's region with its public push keys only."""
    return Verifier(
        Kind.PUSH,
        settings.push_verify_keys.get(settings.region, []),
        tolerance=settings.push_tolerance,
    )


def app_auth(settings: EdgeSettings) -> AppAuth:
    """Who may check, consume and read quotas on this node, from its settings."""
    return AppAuth(settings.edge_app_tokens, allow_loopback=settings.edge_allow_loopback)


def build_app(
    cache: QuotaCache,
    verifier: Verifier,
    *,
    region: str,
    auth: AppAuth | None = None,
    limits: BodyLimits | None = None,
    idempotency: IdempotencyCache | None = None,
    identifier: Identifier | None = None,
    retry_after: float = 1.0,
) -> web.Application:
    """The sidecar's application; `app[STATE_KEY]` exposes readiness and metrics.

    `auth` says who may check, consume and read quotas; without one nobody may (the
    secure default: an embedder opts in by passing tokens or allowing loopback).
    """
    limits = limits if limits is not None else BodyLimits()
    idempotency = idempotency if idempotency is not None else IdempotencyCache()
    identifier = identifier if identifier is not None else Identifier()
    state = EdgeState(
        cache,
        verifier,
        region,
        auth=auth if auth is not None else AppAuth(),
        limits=limits,
        idempotency=idempotency,
        authorizer=Authorizer(cache, identifier, idempotency, retry_after=retry_after),
    )
    handlers = _Handlers(state)
    # Handlers read bodies themselves, within each route's limit; this is only a backstop.
    app = web.Application(client_max_size=max(limits.push, limits.consume))
    app[CACHE_KEY] = cache
    app[STATE_KEY] = state
    app.router.add_post("/v1/push", handlers.push)
    app.router.add_get("/v1/quotas/{tenant_id}/{customer_id}", handlers.quota)
    app.router.add_post("/v1/consume", handlers.consume)
    app.router.add_post("/v1/check", handlers.check)
    app.router.add_route("*", AUTHORIZE_PREFIX, handlers.authorize)
    app.router.add_route("*", AUTHORIZE_PREFIX + "/{tail:.*}", handlers.authorize)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    return app


async def serve(
    settings: EdgeSettings, stop: asyncio.Event, *, cache: QuotaCache | None = None
) -> None:
    """Runs the sidecar for `settings.region` on edge_host:edge_port until `stop` is set.

    Pass `cache` to share it with an in-process Rating node.
    """
    region = settings.region
    verifier = push_verifier(settings)
    if not verifier.key_ids:
        log.warning(
            "no push verify keys for region: every push will be refused", extra={"region": region}
        )
    else:
        log.info("verifying pushes", extra={"region": region, "key_ids": list(verifier.key_ids)})
    auth = app_auth(settings)
    if auth.refuses_everyone:
        log.warning(
            "no application tokens (QUOTAFLOW_EDGE_APP_TOKENS) and loopback not allowed: "
            "every consume, check and quota read will be refused (401)",
            extra={"region": region},
        )
    else:
        # Names only: the digests say nothing useful in a log, the tokens are never here.
        log.info(
            "applications allowed to consume",
            extra={"apps": list(auth.apps), "loopback": auth.allow_loopback},
        )
    cache = (
        cache
        if cache is not None
        else QuotaCache(regions=(region,), rate_share=settings.edge_rate_share)
    )
    identifier = identifier_from_settings(settings)
    app = build_app(
        cache,
        verifier,
        region=region,
        auth=auth,
        limits=BodyLimits(
            consume=settings.edge_consume_max_bytes,
            push=settings.edge_push_max_bytes,
            timeout=settings.edge_body_read_timeout,
        ),
        idempotency=IdempotencyCache(
            max_keys=settings.edge_idempotency_max_keys, ttl=settings.edge_idempotency_ttl
        ),
        identifier=identifier,
        retry_after=settings.edge_authorize_retry_after,
    )
    reporter: UsageReporter | None = None
    if settings.edge_signing_keys:
        reporter = UsageReporter.from_settings(settings, cache, app[STATE_KEY].metrics.registry)
    else:
        log.warning("no edge signing key: usage is not reported", extra={"region": region})
    announcer: NodeAnnouncer | None = None
    if settings.edge_signing_keys:
        announcer = NodeAnnouncer.from_settings(
            settings, app[STATE_KEY].metrics.registry, boot_id=app[STATE_KEY].boot_id
        )
    # No automatic decompression: bodies are read as sent, and refused if encoded.
    # The hot routes are answered on the light HTTP/1.1 face, everything else by aiohttp,
    # on the same port (edge/fastpath.py).
    runner = EdgeRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    try:
        if reporter is not None:
            await reporter.start()
        site = web.TCPSite(runner, settings.edge_host, settings.edge_port)
        await site.start()
        log.info(
            "edge listening",
            extra={"host": settings.edge_host, "port": settings.edge_port, "region": region},
        )
        if announcer is not None:
            await announcer.start()  # once listening: a pusher may push at once
        await stop.wait()
    finally:
        try:
            if announcer is not None:
                await announcer.stop()  # the departure goes out while pushes still land
            await runner.cleanup()
        finally:
            if reporter is not None:
                await reporter.stop()  # after the HTTP face: no consume is lost unsealed
