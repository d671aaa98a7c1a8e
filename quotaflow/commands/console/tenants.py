"""Tenants: the list (search, pages), one tenant's page with its plan catalog and webhook
health, and the changes (onboard, roll the webhook secret, suspend, resume), each through
the same calls as `quotaflow tenants …` and audited with the operator's token name."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from quotaflow.commands.console.context import CONTEXT, SESSION, ConsoleContext
from quotaflow.commands.console.render import page
from quotaflow.commands.ops.exceptions import BadSpec, OpsError
from quotaflow.commands.ops.timespec import parse_duration
from quotaflow.commands.tenants.onboarding import onboard, onboarding_document
from quotaflow.envelope import EVENT_ID, EVENT_TYPE, RECEIVED_AT
from quotaflow.tenants.config import known_regions
from quotaflow.tenants.exceptions import InvalidTenant, TenantNotFound, TenantsError
from quotaflow.topicread import Position, TopicReader, header, tenant_partition
from streams.reconcile import disabled_endpoints
from tables.tenant import Tenant

__all__ = ["routes"]

log = logging.getLogger("quotaflow.console")
routes = web.RouteTableDef()
PAGE_SIZE = 50
# How far back the tenant page looks for the tenant's last accepted event.
TAIL_RECORDS = 5000
TAIL_TIMEOUT = 5.0
STRIPE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Row:
    tenant: Tenant
    active_secrets: int
    expiring_secrets: int
    signature_failures: int | None


UNKNOWN = -1  # failures exist outside the ingresses' top tenants: this one's are not known


def _failures(tenant_id: str, failures: dict[str, int] | None) -> int | None:
    """The tenant's signature failures in the window; the ingress names only its `top`
    tenants and sums the rest as "other", so a tenant it does not name had none only when
    "other" had none."""
    if failures is None:
        return None
    if tenant_id in failures:
        return failures[tenant_id]
    return 0 if not failures.get("other") else UNKNOWN


def _row(tenant: Tenant, failures: dict[str, int] | None) -> Row:
    active = sum(1 for s in tenant.webhook_secrets if s.expires_at is None)
    return Row(tenant, active, len(tenant.webhook_secrets) - active, _failures(tenant.id, failures))


@routes.get("/tenants")
async def tenant_list(request: web.Request) -> web.StreamResponse:
    """Every tenant, 50 a page, filtered by `q` (id, name, Stripe account) and `status`."""
    console = request.app[CONTEXT]
    query = request.query.get("q", "").strip().lower()[:100]
    status = request.query.get("status", "")
    try:
        number = max(int(request.query.get("page", "1")), 1)
    except ValueError:
        number = 1
    ids = console.index.search(query, status)
    total = len(ids)
    pages = max(math.ceil(total / PAGE_SIZE), 1)
    number = min(number, pages)
    found = console.index.documents(ids[(number - 1) * PAGE_SIZE : number * PAGE_SIZE])
    failures = console.watch.signature_failures()
    rows = [_row(t, failures) for t in found]
    return page(
        request,
        "tenants.html",
        rows=rows,
        total=total,
        page=number,
        pages=pages,
        q=query,
        status_filter=status,
        failures_known=failures is not None,
        done=request.query.get("done"),
    )


def _tenant(console: ConsoleContext, tenant_id: str) -> Tenant:
    tenant = console.registry.get(tenant_id)
    if tenant is None:
        raise web.HTTPNotFound(text=f"no tenant {tenant_id!r}")
    return tenant


async def last_accepted(console: ConsoleContext, tenant_id: str) -> dict[str, Any] | None:
    """The newest record of the tenant in the last `TAIL_RECORDS` of its stripe.events
    partition (the ingress wrote it only after verifying it), or None."""
    settings = console.settings
    async with TopicReader(settings, settings.topics.stripe_events) as reader:
        partitions = await reader.partitions()
        partition = tenant_partition(tenant_id, len(partitions))
        (span,) = await reader.spans([partition], Position(edge="end"))
        start = max(span.end - TAIL_RECORDS, 0)
        (span,) = await reader.spans([partition], Position(offset=start))
        newest = None
        async for record in reader.records([span]):
            if record.key == tenant_id.encode():
                newest = record
    if newest is None:
        return None
    headers = tuple(newest.headers or ())
    received = header(headers, RECEIVED_AT)
    return {
        "id": (header(headers, EVENT_ID) or b"").decode(errors="replace"),
        "type": (header(headers, EVENT_TYPE) or b"").decode(errors="replace"),
        "at": float(received) if received else newest.timestamp / 1000,
    }


async def _ask_stripe(console: ConsoleContext, tenant: Tenant) -> dict[str, Any]:
    """Which of the tenant's webhook endpoints Stripe disabled (the listing `quotaflow
    reconcile` does), asked only when the operator asks: it spends the tenant's Stripe
    rate."""
    try:
        found = await disabled_endpoints(console.settings, tenant, timeout=STRIPE_TIMEOUT)
    except (OpsError, TimeoutError) as exc:
        return {"problem": str(exc) or type(exc).__name__, "disabled": None}
    if found is None:
        return {"problem": "Stripe would not list them with this key", "disabled": None}
    return {"problem": None, "disabled": found}


@routes.get("/tenants/{tenant_id}")
async def tenant_page(request: web.Request) -> web.StreamResponse:
    """One tenant: settings (masked), plans, webhook health, and its change forms."""
    console = request.app[CONTEXT]
    tenant = _tenant(console, request.match_info["tenant_id"])
    try:
        async with asyncio.timeout(TAIL_TIMEOUT):
            last = await last_accepted(console, tenant.id)
        last_problem = None
    except Exception as exc:  # noqa: BLE001 - a page still renders; the reason is shown
        last, last_problem = None, type(exc).__name__
    failures = console.watch.signature_failures()
    stripe_check = await _ask_stripe(console, tenant) if request.query.get("stripe") else None
    return page(
        request,
        "tenant.html",
        tenant=tenant,
        row=_row(tenant, failures),
        last=last,
        last_problem=last_problem,
        stripe_check=stripe_check,
        tail_records=TAIL_RECORDS,
        failures_known=failures is not None,
        done=request.query.get("done"),
        error=None,
    )


def _known_regions(console: ConsoleContext) -> list[str]:
    return sorted(known_regions(console.settings) or ())


@routes.get("/tenants-new")
async def new_form(request: web.Request) -> web.StreamResponse:
    """The onboarding form."""
    console = request.app[CONTEXT]
    blank: dict[str, Any] = dict.fromkeys(_KEPT, "") | {"regions": []}
    return page(request, "tenant_new.html", regions=_known_regions(console), form=blank, error=None)


# What a refused form keeps for the operator to correct; secrets are typed again.
_KEPT = ("id", "name", "mode", "stripe_account", "plans", "webhook_url")


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


@routes.post("/tenants-new")
async def create(request: web.Request) -> web.StreamResponse:
    """Onboards a tenant: `onboarding_document` + `onboard`, as `quotaflow tenants add`."""
    console = request.app[CONTEXT]
    form = await request.post()
    plans = [line for line in (_field(form, "plans") or "").splitlines() if line.strip()]
    try:
        doc = onboarding_document(
            tenant_id=_field(form, "id"),
            name=_field(form, "name"),
            mode=_field(form, "mode"),
            stripe_account=_field(form, "stripe_account"),
            stripe_api_key=_field(form, "stripe_api_key"),
            webhook_secret=_field(form, "webhook_secret"),
            regions=[r for r in form.getall("regions", []) if isinstance(r, str)],
            plans=plans,
        )
        tenant = await onboard(
            console.writer, doc, request[SESSION].actor, _field(form, "webhook_url")
        )
    except TenantsError as exc:
        # Secrets are not put back into the form: the operator types them again.
        kept: dict[str, Any] = {k: _field(form, k) or "" for k in _KEPT}
        kept["regions"] = [r for r in form.getall("regions", []) if isinstance(r, str)]
        return page(
            request,
            "tenant_new.html",
            status=422 if isinstance(exc, InvalidTenant) else 409,
            regions=_known_regions(console),
            form=kept,
            error=str(exc),
        )
    log.info("console onboarded a tenant", extra={"actor": request[SESSION].actor})
    raise web.HTTPSeeOther(f"/console/tenants/{tenant.id}?done=onboarded")


async def _change(request: web.Request, action: str) -> web.StreamResponse:
    console = request.app[CONTEXT]
    tenant = _tenant(console, request.match_info["tenant_id"])
    actor = request[SESSION].actor
    form = await request.post()
    try:
        if action == "suspended":
            await console.writer.suspend(tenant.id, actor)
        elif action == "resumed":
            await console.writer.resume(tenant.id, actor)
        else:
            secret = _field(form, "new_secret")
            if secret is None:
                raise InvalidTenant("new_secret", "give the new signing secret (whsec_…)")
            try:
                overlap = parse_duration(_field(form, "overlap") or "24h")
            except BadSpec:
                raise InvalidTenant("overlap", "a duration like 30m, 24h or 1d") from None
            await console.writer.roll_webhook_secret(tenant.id, secret, actor, overlap=overlap)
    except TenantNotFound:
        raise web.HTTPNotFound(text="no such tenant") from None
    except TenantsError as exc:
        failures = console.watch.signature_failures()
        return page(
            request,
            "tenant.html",
            status=422 if isinstance(exc, InvalidTenant) else 409,
            tenant=tenant,
            row=_row(tenant, failures),
            last=None,
            last_problem="not read",
            stripe_check=None,
            tail_records=TAIL_RECORDS,
            failures_known=failures is not None,
            done=None,
            error=str(exc),
        )
    raise web.HTTPSeeOther(f"/console/tenants/{tenant.id}?done={action}")


@routes.post("/tenants/{tenant_id}/suspend")
async def suspend(request: web.Request) -> web.StreamResponse:
    """`TenantWriter.suspend`, as `quotaflow tenants suspend`."""
    return await _change(request, "suspended")


@routes.post("/tenants/{tenant_id}/resume")
async def resume(request: web.Request) -> web.StreamResponse:
    """`TenantWriter.resume`, as `quotaflow tenants resume`."""
    return await _change(request, "resumed")


@routes.post("/tenants/{tenant_id}/roll-secret")
async def roll_secret(request: web.Request) -> web.StreamResponse:
    """`TenantWriter.roll_webhook_secret`, as `quotaflow tenants roll-webhook-secret`."""
    return await _change(request, "rolled")
