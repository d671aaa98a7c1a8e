"""The two webhook endpoints: verify, check, publish, answer, in that order.

Per request the work is small on purpose: a dict lookup for the tenant, admission against
the unverified budgets (`ingress.admission`: global caps, the source's and the route's
failure buckets), one HMAC per active secret, one `orjson.loads`, a token of the tenant's
delivery budget (drawn only once verified, so nobody without the secret can spend it),
one produce awaited until the broker's ack. The tenant's route chooses its secrets before
the body is trusted; the Connect route verifies with the platform's secrets, then routes
by `event.account`. A refusal before the body is read closes the connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from ingress.access_log import log_access
from ingress.admission import CONNECT, Admission, AdmissionLimits, Pass
from ingress.body import read_json_body
from ingress.event import StripeEventFields, parse_event
from ingress.exceptions import (
    AccountConflict,
    IngressError,
    Overloaded,
    PublishUnavailable,
    RequestRejected,
    Throttled,
)
from ingress.limits import IngressLimits, TenantThrottle
from ingress.metrics import IngressMetrics
from ingress.publisher import Publisher
from ingress.signature import verify
from quotaflow.envelope import Envelope
from quotaflow.registry import TenantRegistry
from quotaflow.settings import IngressSettings
from tables.tenant import Tenant, WebhookSecret

log = logging.getLogger(__name__)

__all__ = ["WebhookEndpoints", "error_response"]

_JSON = "application/json"
_ACCEPTED = b'{"status":"accepted"}'
_IGNORED = b'{"status":"ignored","reason":"ignored_event_type"}'

# (secret id, key bytes, expires_at) for one tenant.
_Keys = tuple[tuple[str, bytes, float | None], ...]


def _keys_of(secrets: Sequence[WebhookSecret]) -> _Keys:
    return tuple((s.id, s.secret.get_secret_value().encode(), s.expires_at) for s in secrets)


def error_response(exc: IngressError, retry_after: float | None = None) -> web.Response:
    """`{"error": {"reason", "message"}}` with the error's status (and Retry-After)."""
    body = orjson.dumps({"error": {"reason": exc.reason, "message": exc.message}})
    response = web.Response(body=body, status=exc.status, content_type=_JSON)
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(retry_after)))
    return response


@dataclass(slots=True)
class _Trace:
    """What one request learned, for its access log line and metrics."""

    route: str
    tenant_id: str | None = None
    event: StripeEventFields | None = None
    secret_id: str | None = None
    body_read: bool = False  # False: a refusal closes the connection, the body unread


class WebhookEndpoints:
    def __init__(
        self,
        settings: IngressSettings,
        registry: TenantRegistry,
        publisher: Publisher,
        metrics: IngressMetrics,
        limits: IngressLimits,
        platform_secrets: Sequence[WebhookSecret],
        clock: Callable[[], float] = time.time,
        admission: Admission | None = None,
    ) -> None:
        self._registry = registry
        self._admission = admission or Admission(AdmissionLimits.from_settings(settings))
        self._publisher = publisher
        self._metrics = metrics
        self._limits = limits
        self._clock = clock
        self._throttle = TenantThrottle(limits)
        self._topic = settings.topics.stripe_events
        self._max_body = settings.max_body_bytes
        self._tolerance = settings.signature_tolerance
        self._future_skew = settings.signature_future_skew
        self._publish_timeout = settings.publish_timeout
        self._log_sample = settings.ingress_access_log_sample
        self._forwarded_hops = settings.ingress_forwarded_hops
        self._platform_keys = _keys_of(platform_secrets)

    async def tenant(self, request: web.Request) -> web.Response:
        """POST /v1/webhooks/stripe/{tenant_id}: a tenant's own Stripe endpoint."""
        started = time.perf_counter()
        trace = _Trace("tenant", tenant_id=request.match_info["tenant_id"])
        return await self._answer(request, trace, started, self._tenant_flow(request, trace))

    async def connect(self, request: web.Request) -> web.Response:
        """POST /v1/webhooks/stripe: the platform's Connect endpoint, routed by event.account."""
        started = time.perf_counter()
        trace = _Trace("connect")
        return await self._answer(request, trace, started, self._connect_flow(request, trace))

    async def _answer(
        self,
        request: web.Request,
        trace: _Trace,
        started: float,
        flow: Awaitable[bool],
    ) -> web.Response:
        self._metrics.in_flight.inc()
        retry_after: float | None = None
        try:
            published = await flow
            if published:
                outcome, reason, response = (
                    "accepted",
                    "published",
                    web.Response(body=_ACCEPTED, content_type=_JSON),
                )
            else:
                outcome, reason, response = (
                    "ignored",
                    "ignored_event_type",
                    web.Response(body=_IGNORED, content_type=_JSON),
                )
        except IngressError as exc:
            if isinstance(exc, Throttled):
                outcome, retry_after = "throttled", exc.retry_after
            elif isinstance(exc, PublishUnavailable | Overloaded | AccountConflict):
                outcome, retry_after = "unavailable", exc.retry_after
            else:
                outcome = "rejected"
            reason, response = exc.reason, error_response(exc, retry_after)
            if exc.status in (408, 413) or not trace.body_read:
                # The rest of the body is never read: closing costs the sender a new
                # connection, and us nothing.
                response.force_close()
        except Exception:
            # A bug or a vanished client: counted, then aiohttp logs it and answers 500.
            elapsed = time.perf_counter() - started
            self._metrics.count(trace.route, "error", "internal_error", elapsed)
            raise
        finally:
            self._metrics.in_flight.dec()
        self._metrics.count(
            trace.route, outcome, reason, time.perf_counter() - started, trace.tenant_id
        )
        event = trace.event
        log_access(
            route=trace.route,
            tenant_id=trace.tenant_id,
            event_id=event.id if event else None,
            event_type=event.type if event else None,
            outcome=outcome,
            reason=reason,
            status=response.status,
            started=started,
            secret_id=trace.secret_id,
            sample=self._log_sample,
        )
        return response

    async def _tenant_flow(self, request: web.Request, trace: _Trace) -> bool:
        tenant_id = request.match_info["tenant_id"]
        tenant = self._registry.get(tenant_id)
        admitted = self._admission.enter(
            tenant.id if tenant is not None else None,
            self._source(request),
            self._declared(request),
        )
        try:
            if tenant is None and tenant_id in self._registry.unreadable():
                # Its record exists but this ingress cannot read it (keyring incomplete):
                # Stripe retries a 503, and the sender did nothing wrong (no budget spent).
                raise PublishUnavailable(
                    "tenant_unreadable", "the tenant's record cannot be read here yet"
                )
            if tenant is None:
                admitted.failed()
                raise RequestRejected("unknown_tenant", "no such tenant", status=404)
            try:
                self._check_active(tenant)
            except IngressError:
                admitted.failed()
                raise
            body, now, trace.secret_id = await self._read_verified(
                request, trace, admitted, lambda now: self._tenant_keys(tenant, now)
            )
            trace.event = event = parse_event(body)
            if event.account is not None and event.account != tenant.stripe_account:
                raise RequestRejected("account_mismatch", "event.account is not this tenant's")
            return await self._deliver(tenant, event, body, now, trace.secret_id)
        finally:
            admitted.release()

    async def _connect_flow(self, request: web.Request, trace: _Trace) -> bool:
        if not self._platform_keys:
            raise RequestRejected(
                "connect_not_configured", "no platform webhook secret is configured", status=404
            )
        admitted = self._admission.enter(CONNECT, self._source(request), self._declared(request))
        try:
            body, now, secret_id = await self._read_verified(
                request,
                trace,
                admitted,
                lambda now: [
                    (i, k) for i, k, exp in self._platform_keys if exp is None or now < exp
                ],
            )
            trace.secret_id = secret_id
            trace.event = event = parse_event(body)
            if event.account is None:
                raise RequestRejected("missing_account", "a Connect event must carry event.account")
            tenant = self._registry.by_account(event.account)
            if tenant is None:
                holders = self._registry.account_holders(event.account)
                if holders:
                    log.error(
                        "connect account held by several tenants: events held back",
                        extra={"tenants": holders},
                    )
                    raise AccountConflict()
                if self._registry.unreadable():
                    # The account may be an unreadable record's: hold the event, don't refuse.
                    raise PublishUnavailable(
                        "tenant_unreadable", "a tenant record cannot be read here yet"
                    )
                raise RequestRejected("unknown_account", "no tenant has this account", status=404)
            trace.tenant_id = tenant.id
            self._check_active(tenant)
            return await self._deliver(tenant, event, body, now, secret_id)
        finally:
            admitted.release()

    async def _read_verified(
        self,
        request: web.Request,
        trace: _Trace,
        admitted: Pass,
        keys: Callable[[float], Sequence[tuple[str, bytes]]],
    ) -> tuple[bytes, float, str]:
        """The body, the time, and the id of the secret that verified it; a request that
        fails here spends its sender's unverified budget, one that passes earns trust."""
        try:
            body = await self._read_body(request, trace)
            now = self._clock()
            secret_id = verify(
                request.headers.get("Stripe-Signature"),
                body,
                keys(now),
                now,
                self._tolerance,
                self._future_skew,
            )
        except IngressError:
            admitted.failed()
            raise
        admitted.verified()
        return body, now, secret_id

    async def _deliver(
        self, tenant: Tenant, event: StripeEventFields, body: bytes, now: float, secret_id: str
    ) -> bool:
        """Draws on the tenant's delivery budget (verified events only), then publishes."""
        wait = self._throttle.acquire(tenant.id)
        if wait:
            raise Throttled(retry_after=wait)
        try:
            return await self._publish(tenant, event, body, now, secret_id)
        finally:
            self._throttle.release(tenant.id)

    def _source(self, request: web.Request) -> str | None:
        """The sender's address: the peer's, or behind `hops` trusted proxies the address
        the outermost of them saw (`hops` from the right of X-Forwarded-For; anything
        further left is the client's say and not trusted)."""
        hops = self._forwarded_hops
        if hops:
            forwarded = request.headers.getall("X-Forwarded-For", ())
            addresses = [a.strip() for value in forwarded for a in value.split(",")]
            if len(addresses) >= hops:
                return addresses[-hops]
        return request.remote

    def _declared(self, request: web.Request) -> int:
        """Body bytes to reserve against the global cap: as declared, at most the limit."""
        length = request.content_length
        return self._max_body if length is None else min(length, self._max_body)

    async def _publish(
        self, tenant: Tenant, event: StripeEventFields, body: bytes, now: float, secret_id: str
    ) -> bool:
        """Publishes and returns True, or returns False for a type outside the allow-list."""
        if event.livemode != tenant.livemode:
            raise RequestRejected("livemode_mismatch", f"tenant is in {tenant.mode} mode")
        if tenant.event_types is not None and event.type not in tenant.event_types:
            return False
        headers = Envelope(
            tenant_id=tenant.id,
            event_id=event.id,
            event_type=event.type,
            livemode=event.livemode,
            received_at=now,
            secret_id=secret_id,
        ).headers()
        sent = time.perf_counter()
        try:
            await self._publisher.publish(
                self._topic, tenant.id.encode(), body, headers, self._publish_timeout
            )
        except PublishUnavailable as exc:
            exc.retry_after = self._limits.retry_after
            raise
        self._metrics.publish_latency.observe(time.perf_counter() - sent)
        self._metrics.body_bytes.inc(len(body))
        return True

    @staticmethod
    def _check_active(tenant: Tenant) -> None:
        if tenant.status != "active":
            raise RequestRejected("tenant_suspended", "tenant is suspended", status=403)

    def _platform_keys_at(self, now: float) -> list[tuple[str, bytes]]:
        return [(i, k) for i, k, exp in self._platform_keys if exp is None or now < exp]

    def _tenant_keys(self, tenant: Tenant, now: float) -> list[tuple[str, bytes]]:
        # Not cached here: a cache by tenant would keep every tenant's document alive
        # beyond the registry's bounded one; encoding one or two secrets costs ~1 us.
        keys = _keys_of(tenant.webhook_secrets)
        return [(i, k) for i, k, expires in keys if expires is None or now < expires]

    async def _read_body(self, request: web.Request, trace: _Trace) -> bytes:
        trace.body_read = True
        return await read_json_body(
            request, max_bytes=self._max_body, timeout=self._limits.body_read_timeout
        )
