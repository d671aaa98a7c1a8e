"""Onboarding, one way for every face: the CLI (`quotaflow tenants add`) and the console
build the same document from the same fields and make the same calls.

`plan_entry` reads `LOOKUP_KEY=QUOTA`; `onboarding_document` lays flat fields over an
optional base document; `onboard` adds the tenant and, given a URL, registers its Stripe
webhook endpoint and stores the signing secret Stripe returns (both audited).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from quotaflow.commands.tenants.stripe_webhooks import create_endpoint
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.tenants.exceptions import InvalidTenant
from tables.tenant import Tenant

__all__ = ["onboard", "onboarding_document", "plan_entry", "register_webhook"]


def plan_entry(text: str) -> tuple[str, dict[str, Any]]:
    """`LOOKUP_KEY=QUOTA` (QUOTA a non-negative integer or `unlimited`) -> (key, plan)."""
    key, sep, quota = text.strip().partition("=")
    key, quota = key.strip(), quota.strip()
    if not sep or not key:
        raise InvalidTenant(
            "plans", f"{text!r}: use LOOKUP_KEY=QUOTA (QUOTA an integer or 'unlimited')"
        )
    if quota == "unlimited":
        return key, {"quota": None}
    if not quota.isdigit():
        raise InvalidTenant(f"plans.{key}.quota", f"{quota!r} is not a non-negative integer")
    return key, {"quota": int(quota)}


def onboarding_document(
    base: Mapping[str, Any] | None = None,
    *,
    tenant_id: str | None = None,
    name: str | None = None,
    mode: str | None = None,
    stripe_account: str | None = None,
    stripe_api_key: str | None = None,
    webhook_secret: str | None = None,
    regions: Iterable[str] = (),
    plans: Iterable[str] = (),
    event_types: Iterable[str] = (),
) -> dict[str, Any]:
    """A tenant document: `base` (a file's) with every given field laid over it."""
    doc: dict[str, Any] = dict(base or {})
    flags: dict[str, Any] = {
        "id": tenant_id,
        "name": name,
        "mode": mode,
        "stripe_account": stripe_account,
        "stripe_api_key": stripe_api_key,
        "regions": list(regions) or None,
        "event_types": list(event_types) or None,
    }
    doc.update({k: v for k, v in flags.items() if v is not None})
    if webhook_secret is not None:
        doc["webhook_secrets"] = [{"id": "s1", "secret": webhook_secret}]
    entries = dict(plan_entry(p) for p in plans)
    if entries:
        doc["plans"] = {**doc.get("plans", {}), **entries}
    return doc


async def register_webhook(
    writer: TenantWriter, tenant: Tenant, url: str, overlap: float, actor: str
) -> Tenant:
    """Creates the tenant's Stripe webhook endpoint at `url` and stores its secret."""
    endpoint = await create_endpoint(tenant, url, api_base=writer.settings.stripe_api_base)
    return await writer.roll_webhook_secret(
        tenant.id, endpoint.secret, actor, overlap=overlap, endpoint_id=endpoint.endpoint_id
    )


async def onboard(
    writer: TenantWriter, doc: Mapping[str, Any], actor: str, webhook_url: str | None = None
) -> Tenant:
    """Adds the tenant; with `webhook_url`, also registers its Stripe webhook endpoint."""
    tenant = await writer.add(doc, actor)
    if webhook_url is not None:
        tenant = await register_webhook(writer, tenant, webhook_url, 0.0, actor)
    return tenant
