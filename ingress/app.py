"""The ingress's aiohttp Application: routes, JSON errors, health, readiness, metrics.

`build_app` only wires; the publisher is started and stopped by its owner (`server.serve`
or a test), so the app can be built around any publisher, connected or not.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ingress.admission import Admission, AdmissionLimits
from ingress.exceptions import RequestRejected
from ingress.limits import IngressLimits
from ingress.metrics import IngressMetrics
from ingress.nodes import NodesEndpoint
from ingress.publisher import Publisher
from ingress.shared_trust import SharedTrust
from ingress.usage import UsageEndpoint
from ingress.webhooks import WebhookEndpoints, error_response
from quotaflow.registry import TenantRegistry
from quotaflow.settings import IngressSettings
from tables.tenant import WebhookSecret

__all__ = ["METRICS_KEY", "build_app", "platform_secrets_from"]

METRICS_KEY = web.AppKey("quotaflow_ingress_metrics", IngressMetrics)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_REASONS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def platform_secrets_from(settings: IngressSettings) -> tuple[WebhookSecret, ...]:
    """The Connect (platform) endpoint's secrets."""
    return tuple(settings.connect_webhook_secrets)


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Router errors (unknown path, wrong method) answer in the same JSON shape as ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = _HTTP_REASONS.get(exc.status, "http_error")
        response = error_response(RequestRejected(reason, exc.reason, status=exc.status))
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


def build_app(
    settings: IngressSettings,
    registry: TenantRegistry,
    publisher: Publisher,
    clock: Callable[[], float] = time.time,
    *,
    limits: IngressLimits | None = None,
    admission_limits: AdmissionLimits | None = None,
    platform_secrets: Sequence[WebhookSecret] | None = None,
) -> web.Application:
    """The ingress app. `limits` default to `IngressLimits.from_settings(settings)`,
    `admission_limits` to `AdmissionLimits.from_settings(settings)`; `platform_secrets`
    (the Connect endpoint's) to `platform_secrets_from(settings)`."""
    metrics = IngressMetrics()
    metrics.refused_records.registry = registry
    admission = Admission(
        admission_limits or AdmissionLimits.from_settings(settings),
        shared=SharedTrust.from_environment(),
    )
    endpoints = WebhookEndpoints(
        settings,
        registry,
        publisher,
        metrics,
        limits or IngressLimits.from_settings(settings),
        platform_secrets_from(settings) if platform_secrets is None else platform_secrets,
        clock,
        admission,
    )

    async def healthz(request: web.Request) -> web.Response:
        """Alive: the event loop answers."""
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        """Ready only when the producer reaches the broker, the registry is loaded and every
        tenant record in it can be read (a record this keyring cannot open would hold that
        tenant's webhooks and usage back with 503: a balancer should send them elsewhere,
        and a rollout with an incomplete keyring should stop here)."""
        producer = await publisher.probe()
        tenants = registry.ready
        unreadable = len(registry.unreadable())
        metrics.unreadable_records.set(unreadable)
        ok = producer and tenants and unreadable == 0
        doc: dict[str, object] = {
            "status": "ready" if ok else "not_ready",
            "producer": producer,
            "registry": tenants,
        }
        if unreadable:
            doc["reason"] = "tenant_records_unreadable"
            doc["unreadable_records"] = unreadable
        return web.json_response(doc, status=200 if ok else 503)

    async def metrics_handler(request: web.Request) -> web.Response:
        metrics.unreadable_records.set(len(registry.unreadable()))
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    # client_max_size bounds request.read() as it streams, for bodies without Content-Length.
    app = web.Application(middlewares=[_json_errors], client_max_size=settings.max_body_bytes)
    app[METRICS_KEY] = metrics
    app.router.add_post("/v1/webhooks/stripe/{tenant_id}", endpoints.tenant)
    app.router.add_post("/v1/webhooks/stripe", endpoints.connect)
    usage = UsageEndpoint(settings, registry, publisher, metrics.registry, clock)
    app.router.add_post("/v1/usage", usage.handle)
    nodes = NodesEndpoint(settings, publisher, metrics.registry)
    app.router.add_post("/v1/edge/nodes", nodes.handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
