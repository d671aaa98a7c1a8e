"""`POST /v1/usage`: edge usage batches into `usage.events`, verified, validated, durable.

Request (sent by the edge sidecar's reporter, `edge/reporter.py`):

    X-Quotaflow-Region: eu
    X-Quotaflow-Signature: t=<unix s>,k=<key id>,ed25519=<base64url>   (wire/signing.py)
    {"batch_id": "node-1:9f86d081884c7d65:42", "node_id": "node-1", "region": "eu",
     "sent_at": 1767225600.5,
     "items": [{"tenant_id": "acme", "customer_id": "cus_1", "units": 30},
               {"tenant_id": "acme", "customer_id": "cus_1", "units": 2, "feature": "exports"}]}

An item without `feature` is the default feature's usage; with one, a named metered
feature's (`[A-Za-z0-9][A-Za-z0-9._:-]{0,63}`).

A batch id is `<node_id>:<spool incarnation, 16 hex>:<seq>`, its node part the body's
`node_id`. The legacy `<node_id>:<seq>` is accepted while `usage_legacy_batch_ids` is on
(the default): an edge that spooled batches before the upgrade re-sends them under their
old ids, and an old edge treats a 400 as malformed and sets the batch aside, so refusing
the old form during a rolling upgrade would lose usage. The key id that verified the
report goes into every record (`key_id`, header `qf-key-id`): the usage agent keeps its
marks per key, so a node id is only ever as good as the key that signed it.

The region header picks the keys before the body is trusted (the region's public edge
keys, `QUOTAFLOW_EDGE_VERIFY_KEYS`, kind `usage`: a push or announcement signature never
verifies here; several during a rotation; a signature is accepted once within the
window). Then: every item names a known tenant (active or suspended) served in that
region, with 1 <= units <= 10^9, at most one item per (tenant, customer, feature), at most
`usage_max_items`. The batch is split per tenant into one record each (key = tenant id,
so a tenant's usage shares the partition of its customers' table), published with
acks=all; 200 only once every record is acknowledged, 503 + Retry-After otherwise (the
edge re-sends the same batch id; a record that landed anyway is a duplicate the usage agent
ignores).

Refusals answer `{"error": {"reason", "message"[, "tenant_id"]}}` and publish nothing:
401 signature reasons (`missing_signature`, `bad_signature`, `stale`, `replayed`,
`unknown_region`, ...), 400 `bad_body`, `region_mismatch`, `bad_batch_id`, `empty_batch`,
`too_many_items`, `duplicate_item`, 408 `body_timeout`, 413 `body_too_large`, 415
`unsupported_media_type`, `unsupported_encoding`, 422 `unknown_tenant`,
`tenant_not_in_region` (with the `tenant_id`, so the edge can drop that tenant's items
and re-send the rest under the same id).

A tenant whose record exists but cannot be read here (`TenantRegistry.unreadable()`: this
ingress's keyring lacks the record's key) is not unknown: the batch answers 503
`tenant_unreadable` + Retry-After, publishes nothing, and the edge keeps it and retries
(design guarantee 7). The other tenants of that batch wait with it; the ingress is not
ready meanwhile, so a balancer sends the retry to a replica that can read the record.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingress.body import read_json_body
from ingress.exceptions import IngressError, PublishUnavailable, RequestRejected
from ingress.publisher import Publisher
from quotaflow.envelope import RECEIVED_AT, SCHEMA, TENANT
from quotaflow.registry import TenantRegistry
from quotaflow.settings import IngressSettings
from tables.dedupe import parse_batch_id
from tables.tenant import FEATURE_PATTERN, TENANT_ID_PATTERN
from tables.usage import (
    BATCH_ID_HEADER,
    BATCH_ID_PATTERN,
    KEY_ID_HEADER,
    MAX_UNITS,
    NODE_ID_PATTERN,
    REGION_HEADER,
    USAGE_SCHEMA,
)
from wire import REGION_HTTP_HEADER, SIGNATURE_HEADER, Kind, SignatureError, Verifier

__all__ = ["REGION_HTTP_HEADER", "UsageEndpoint"]

log = logging.getLogger("quotaflow.ingress.usage")

_REGION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_JSON = "application/json"


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str = Field(..., pattern=TENANT_ID_PATTERN)
    customer_id: str = Field(..., min_length=1, max_length=255)
    units: int = Field(..., ge=1, le=MAX_UNITS, strict=True)
    feature: str | None = Field(None, pattern=FEATURE_PATTERN)


class _Report(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    batch_id: str = Field(..., pattern=BATCH_ID_PATTERN)
    node_id: str = Field(..., pattern=NODE_ID_PATTERN)
    region: str = Field(..., min_length=1, max_length=64)
    sent_at: float
    items: list[_Item]


class _TenantRefused(RequestRejected):
    """A tenant in the batch cannot take usage here; names it so the edge can drop it."""

    def __init__(self, reason: str, message: str, tenant_id: str) -> None:
        super().__init__(reason, message, status=422)
        self.tenant_id = tenant_id


def _error(exc: IngressError, retry_after: float | None = None) -> web.Response:
    doc: dict[str, object] = {"reason": exc.reason, "message": exc.message}
    if isinstance(exc, _TenantRefused):
        doc["tenant_id"] = exc.tenant_id
    response = web.Response(
        body=orjson.dumps({"error": doc}), status=exc.status, content_type=_JSON
    )
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(retry_after)))
    return response


class UsageEndpoint:
    """The `/v1/usage` handler; one per ingress app."""

    def __init__(
        self,
        settings: IngressSettings,
        registry: TenantRegistry,
        publisher: Publisher,
        metrics_registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._publisher = publisher
        self._clock = clock
        self._topic = settings.topics.usage_events
        self._max_body = settings.usage_max_body_bytes
        self._max_items = settings.usage_max_items
        self._timeout = settings.publish_timeout
        self._retry_after = settings.ingress_retry_after
        self._read_timeout = settings.ingress_body_read_timeout
        self._verifiers: dict[str, Verifier] = {}
        self.reports = Counter(
            "quotaflow_ingress_usage_reports_total",
            "Usage reports by outcome (accepted, rejected, unavailable) and reason.",
            ("outcome", "reason"),
            registry=metrics_registry,
        )
        self.units = Counter(
            "quotaflow_ingress_usage_units_total",
            "Units in accepted usage reports.",
            registry=metrics_registry,
        )

    def _verifier(self, region: str) -> Verifier | None:
        verifier = self._verifiers.get(region)
        if verifier is None:
            keys = self._settings.edge_verify_keys.get(region)
            if not keys:
                return None
            verifier = Verifier(
                Kind.USAGE, keys, tolerance=self._settings.push_tolerance, clock=self._clock
            )
            self._verifiers[region] = verifier
        return verifier

    async def handle(self, request: web.Request) -> web.Response:
        """POST /v1/usage: verify the region's signature, validate, publish, then answer."""
        started = time.perf_counter()
        try:
            records, units, batch_id = await self._accept(request)
        except PublishUnavailable as exc:
            self.reports.labels("unavailable", exc.reason).inc()
            return _error(exc, self._retry_after)
        except IngressError as exc:
            self.reports.labels("rejected", exc.reason).inc()
            log.info("usage report refused", extra={"reason": exc.reason, "outcome": "rejected"})
            response = _error(exc)
            if exc.status == 413:
                response.force_close()
            return response
        parsed = parse_batch_id(batch_id)
        # Counted apart so an operator sees when no edge sends legacy ids any more.
        legacy = parsed is not None and parsed.incarnation is None
        self.reports.labels("accepted", "legacy_batch_id" if legacy else "published").inc()
        self.units.inc(units)
        log.debug(
            "usage report accepted",
            extra={
                "batch_id": batch_id,
                "records": records,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )
        return web.Response(
            body=orjson.dumps({"status": "accepted", "batch_id": batch_id, "records": records}),
            content_type=_JSON,
        )

    async def _accept(self, request: web.Request) -> tuple[int, int, str]:
        region = request.headers.get(REGION_HTTP_HEADER, "")
        if not _REGION.match(region):
            raise RequestRejected("unknown_region", "missing or malformed region", status=401)
        verifier = self._verifier(region)
        if verifier is None:
            raise RequestRejected("unknown_region", "no edge keys for this region", status=401)
        body = await self._read_body(request)
        try:
            key_id = verifier.verify(request.headers.get(SIGNATURE_HEADER), body)
        except SignatureError as exc:
            raise RequestRejected(exc.reason, "usage signature refused", status=401) from None
        try:
            report = _Report.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            raise RequestRejected("bad_body", "not a valid usage report") from None
        if report.region != region:
            raise RequestRejected("region_mismatch", "body region differs from the header")
        batch = parse_batch_id(report.batch_id)
        if batch is None or batch.node != report.node_id:
            raise RequestRejected("bad_batch_id", "batch_id must be <node_id>:<incarnation>:<seq>")
        if batch.incarnation is None and not self._settings.usage_legacy_batch_ids:
            raise RequestRejected("bad_batch_id", "legacy <node_id>:<seq> batch ids are off")
        if not report.items:
            raise RequestRejected("empty_batch", "a usage report carries at least one item")
        if len(report.items) > self._max_items:
            raise RequestRejected("too_many_items", f"at most {self._max_items} items")
        by_tenant: dict[str, list[dict[str, object]]] = {}
        seen: set[tuple[str, str, str | None]] = set()
        for item in report.items:
            if (item.tenant_id, item.customer_id, item.feature) in seen:
                raise RequestRejected("duplicate_item", "one item per (tenant, customer, feature)")
            seen.add((item.tenant_id, item.customer_id, item.feature))
            entry: dict[str, object] = {"customer_id": item.customer_id, "units": item.units}
            if item.feature is not None:
                # Only when named: a default-feature record stays byte-for-byte as before.
                entry["feature"] = item.feature
            by_tenant.setdefault(item.tenant_id, []).append(entry)
        for tenant_id in by_tenant:
            self._check_tenant(tenant_id, region)
        now = self._clock()
        await self._publish(report, by_tenant, now, key_id)
        return len(by_tenant), sum(i.units for i in report.items), report.batch_id

    def _check_tenant(self, tenant_id: str, region: str) -> None:
        tenant = self._registry.summary(tenant_id)  # regions only: no document built
        if tenant is None and tenant_id in self._registry.unreadable():
            raise PublishUnavailable(
                "tenant_unreadable",
                "the tenant's record cannot be read here yet",
                retry_after=self._retry_after,
            )
        if tenant is None:
            raise _TenantRefused("unknown_tenant", "no such tenant", tenant_id)
        # A suspended tenant's usage is kept: it was consumed before the suspension
        # reached the edges (they deny from then on), so it counts in `used` (README,
        # Usage loop). Only a tenant that is gone, or not served here, is refused.
        if region not in tenant.regions:
            raise _TenantRefused("tenant_not_in_region", "tenant not served here", tenant_id)

    async def _publish(
        self,
        report: _Report,
        by_tenant: dict[str, list[dict[str, object]]],
        now: float,
        key_id: str,
    ) -> None:
        sends = []
        for tenant_id, items in by_tenant.items():
            value = orjson.dumps(
                {
                    "batch_id": report.batch_id,
                    "node_id": report.node_id,
                    "region": report.region,
                    "tenant_id": tenant_id,
                    "sent_at": report.sent_at,
                    "received_at": now,
                    "items": items,
                    "key_id": key_id,
                }
            )
            headers = [
                (TENANT, tenant_id.encode()),
                (BATCH_ID_HEADER, report.batch_id.encode()),
                (REGION_HEADER, report.region.encode()),
                (RECEIVED_AT, repr(now).encode()),
                (KEY_ID_HEADER, key_id.encode()),
                (SCHEMA, USAGE_SCHEMA),
            ]
            sends.append(
                self._publisher.publish(
                    self._topic, tenant_id.encode(), value, headers, self._timeout
                )
            )
        results = await asyncio.gather(*sends, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, IngressError):
                    raise result
                raise result

    async def _read_body(self, request: web.Request) -> bytes:
        return await read_json_body(request, max_bytes=self._max_body, timeout=self._read_timeout)
