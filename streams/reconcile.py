"""Reconcile: Stripe's own list of a tenant's events against what `stripe.events` holds.

Stripe keeps 30 days of events (`GET /v1/events`). Every event it lists for the window
whose id no record of the tenant's partition carries (`qf-event-id`) is injected into
`stripe.events` (key = tenant) as the ingress would have, with the envelope saying how
it came: `qf-secret-id: reconcile` (verified by fetching it from Stripe's API with the
tenant's key, not by a webhook signature) and `qf-backfill: reconcile`. The worker
dedupes by event id, so an event that was in fact delivered meanwhile changes nothing.
The tenant's allow-list of event types (`event_types`) is honoured as at the ingress.

It also lists the tenant's webhook endpoints and reports the disabled ones: Stripe
disables an endpoint after days of failed deliveries, and nothing arrives after that.

The value injected is the event as the API renders it (JSON of the API object), not the
bytes a webhook would have carried: the same fields, another byte order.

It lives with the worker, which runs it on every resume (`streams/resume.py`); the
operator's `quotaflow reconcile` and the console call the same functions from above.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import stripe

from quotaflow.envelope import EVENT_ID, Envelope
from quotaflow.exceptions import OpsError
from quotaflow.produce import OpsProducer
from quotaflow.settings import AdminSettings, WorkerSettings
from quotaflow.topicread import Position, TopicReader, Tracker, header, tenant_partition
from tables.tenant import Tenant

BACKFILL = "qf-backfill"
RECONCILE_SECRET_ID = "reconcile"  # noqa: S105 - the envelope's secret id, not a secret
MAX_EVENTS = 100_000
# An event Stripe created at or after `since` reached the ingress after that (less clock
# skew between Stripe and the broker), so the topic is read from here, not from its
# beginning: the worker runs this on every resume and must not scan 14 days each time.
HELD_MARGIN = 3600.0

# The worker (resumes) and the operator's types (CLI, console) reconcile: both name Stripe.
StripeSide = WorkerSettings | AdminSettings


@dataclass
class ReconcileReport:
    tenant: str
    since: float
    listed: int = 0
    present: int = 0
    missing: list[str] = field(default_factory=list)
    injected: int = 0
    filtered: int = 0
    # None: the endpoints could not be listed (restricted key, or a peer without the API).
    disabled_endpoints: list[dict[str, Any]] | None = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def stripe_client(
    tenant: Tenant, settings: StripeSide, http: stripe.HTTPClient
) -> stripe.StripeClient:
    """The tenant's own client (its key, its Connect account), explicit retries."""
    if tenant.stripe_api_key is None:
        raise OpsError(f"tenant {tenant.id!r} has no Stripe API key")
    bases: Any = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    return stripe.StripeClient(
        tenant.stripe_api_key.get_secret_value(),
        stripe_account=tenant.stripe_account,
        base_addresses=bases,
        max_network_retries=2,
        http_client=http,
    )


async def _stripe_events(client: stripe.StripeClient, since: float) -> list[dict[str, Any]]:
    page = await client.v1.events.list_async(params={"created": {"gte": int(since)}, "limit": 100})
    out: list[dict[str, Any]] = []
    async for event in page.auto_paging_iter():
        data = event.to_dict(for_json=True)
        # A server that ignores `created` (stripe-mock) still only counts in the window.
        if float(data.get("created") or 0) >= since:
            out.append(data)
        if len(out) >= MAX_EVENTS:
            raise OpsError(f"more than {MAX_EVENTS} events since then: narrow --since")
    return out


async def _disabled_endpoints(client: stripe.StripeClient) -> list[dict[str, Any]] | None:
    """Disabled endpoints; None when they cannot be listed (a restricted key, or a peer
    such as localstripe without the endpoint API)."""
    try:
        page = await client.v1.webhook_endpoints.list_async(params={"limit": 100})
    except stripe.StripeError as exc:
        if exc.http_status in (400, 401, 403, 404):
            return None
        raise
    found = []
    async for endpoint in page.auto_paging_iter():
        doc = endpoint.to_dict()
        if doc.get("status") == "disabled":
            found.append({"id": doc.get("id"), "url": doc.get("url"), "status": "disabled"})
    return found


async def disabled_endpoints(
    settings: StripeSide, tenant: Tenant, *, timeout: float = 10.0
) -> list[dict[str, Any]] | None:
    """The tenant's webhook endpoints Stripe disabled, listed with its own key as
    `reconcile` lists them; None when they cannot be listed (see `_disabled_endpoints`)."""
    http = stripe.AIOHTTPClient()
    try:
        client = stripe_client(tenant, settings, http)
        async with asyncio.timeout(timeout):
            return await _disabled_endpoints(client)
    except stripe.StripeError as exc:
        raise OpsError(
            f"Stripe refused the listing: {type(exc).__name__} ({exc.http_status})"
        ) from None
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


async def held_event_ids(
    settings: StripeSide,
    tenant_id: str,
    progress: Tracker | None = None,
    *,
    received_since: float | None = None,
) -> set[str]:
    """Event ids the tenant's partition of `stripe.events` holds now (in records produced
    at or after `received_since`, if given)."""
    key = tenant_id.encode()
    ids: set[str] = set()
    async with TopicReader(settings, settings.topics.stripe_events) as reader:
        partitions = await reader.partitions()
        start = (
            Position(at=received_since)
            if received_since is not None and received_since > 0
            else Position(edge="beginning")
        )
        spans = await reader.spans([tenant_partition(tenant_id, len(partitions))], start)
        async for record in reader.records(spans, progress):
            found = header(tuple(record.headers or ()), EVENT_ID)
            if record.key == key and found is not None:
                ids.add(found.decode(errors="replace"))
    return ids


async def reconcile(
    settings: StripeSide,
    tenant: Tenant,
    since: float,
    *,
    dry_run: bool = False,
    timeout: float = 120.0,
    progress: Tracker | None = None,
) -> ReconcileReport:
    """Compares, injects what is missing (unless `dry_run`), reports disabled endpoints."""
    report = ReconcileReport(tenant.id, since, dry_run=dry_run)
    http = stripe.AIOHTTPClient()
    try:
        client = stripe_client(tenant, settings, http)
        async with asyncio.timeout(timeout):
            events = await _stripe_events(client, since)
            report.disabled_endpoints = await _disabled_endpoints(client)
    except stripe.StripeError as exc:
        # The message can quote the request; keep only what is safe to print.
        raise OpsError(
            f"Stripe refused the listing: {type(exc).__name__} ({exc.http_status})"
        ) from None
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    report.listed = len(events)
    held = await held_event_ids(settings, tenant.id, progress, received_since=since - HELD_MARGIN)
    allowed = None if tenant.event_types is None else set(tenant.event_types)
    missing = []
    for event in sorted(events, key=lambda e: (e.get("created") or 0, str(e.get("id")))):
        if str(event.get("id")) in held:
            report.present += 1
        elif allowed is not None and event.get("type") not in allowed:
            report.filtered += 1
        else:
            missing.append(event)
    report.missing = [str(e.get("id")) for e in missing]
    if dry_run or not missing:
        return report
    async with OpsProducer(settings) as producer:
        for event in missing:
            envelope = Envelope(
                tenant_id=tenant.id,
                event_id=str(event["id"]),
                event_type=str(event.get("type")),
                livemode=bool(event.get("livemode")),
                received_at=time.time(),
                secret_id=RECONCILE_SECRET_ID,
            )
            await producer.send(
                settings.topics.stripe_events,
                orjson.dumps(event),
                key=tenant.id.encode(),
                headers=[*envelope.headers(), (BACKFILL, b"reconcile")],
            )
            report.injected += 1
        await producer.flush()
    return report
