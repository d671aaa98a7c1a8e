"""Registers a tenant's webhook endpoint in the tenant's Stripe account.

The endpoint subscribes to exactly the event types quotaflow's billing agent handles and
renders them at one pinned API version, so the shapes the agent reads never change under
it. Stripe returns the endpoint's signing secret only in the create response; the writer
stores it (encrypted) at once, as a secret roll, so a previous endpoint's secret keeps
verifying for the overlap.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import stripe

from quotaflow.tenants.exceptions import WebhookRegistrationError
from tables.tenant import Tenant

__all__ = ["STRIPE_API_VERSION", "WEBHOOK_EVENT_TYPES", "RegisteredEndpoint", "create_endpoint"]

log = logging.getLogger("quotaflow.tenants.stripe")

STRIPE_API_VERSION = "2026-06-24.dahlia"
"""The API version the tenant's events are rendered at: the one the billing agent's field
locations were checked against (docs/notes: item-level periods, invoice.parent). Changing
it changes event shapes for every newly registered tenant: do it deliberately."""

WEBHOOK_EVENT_TYPES: tuple[str, ...] = (
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "checkout.session.completed",
    "entitlements.active_entitlement_summary.updated",
)


@dataclass(frozen=True)
class RegisteredEndpoint:
    endpoint_id: str
    secret: str

    def __repr__(self) -> str:
        return f"RegisteredEndpoint(endpoint_id={self.endpoint_id!r})"


def check_url(tenant: Tenant, url: str) -> None:
    """The URL must be the tenant's own ingress route, over https (http only on loopback)."""
    parts = urlsplit(url)
    loopback = parts.hostname in {"127.0.0.1", "localhost", "::1"}
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise WebhookRegistrationError(tenant.id, "the webhook URL must be https")
    if not parts.path.rstrip("/").endswith(f"/v1/webhooks/stripe/{tenant.id}"):
        raise WebhookRegistrationError(
            tenant.id, f"the webhook URL must end with /v1/webhooks/stripe/{tenant.id}"
        )


async def create_endpoint(
    tenant: Tenant, url: str, *, api_base: str | None = None, timeout: float = 30.0
) -> RegisteredEndpoint:
    """Creates the endpoint with the tenant's API key; returns its id and signing secret."""
    check_url(tenant, url)
    if tenant.stripe_api_key is None:
        raise WebhookRegistrationError(tenant.id, "has no Stripe API key")
    http = stripe.AIOHTTPClient()
    bases: Any = {"api": api_base} if api_base else None
    client = stripe.StripeClient(
        tenant.stripe_api_key.get_secret_value(),
        base_addresses=bases,
        max_network_retries=2,
        http_client=http,
    )
    params: Any = {
        "url": url,
        "enabled_events": list(WEBHOOK_EVENT_TYPES),
        "api_version": STRIPE_API_VERSION,
        "description": f"quotaflow tenant {tenant.id}",
        "metadata": {"quotaflow_tenant": tenant.id},
    }
    try:
        async with asyncio.timeout(timeout):
            try:
                endpoint = await client.v1.webhook_endpoints.create_async(params)
            except stripe.StripeError as exc:
                # Stripe's message may quote the Authorization header (stripe-mock does,
                # in full): only the status and the error code are safe to repeat.
                raise WebhookRegistrationError(
                    tenant.id,
                    f"Stripe refused the endpoint (HTTP {exc.http_status}, "
                    f"{exc.code or type(exc).__name__})",
                ) from None
            secret = getattr(endpoint, "secret", None)
            if not isinstance(secret, str) or not secret.startswith("whsec_"):
                # Stripe returns the secret on create only; without it the endpoint's
                # webhooks could never be verified, so it is removed again.
                await client.v1.webhook_endpoints.delete_async(endpoint.id)
                raise WebhookRegistrationError(
                    tenant.id,
                    f"Stripe returned no signing secret for {endpoint.id}; endpoint deleted",
                )
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    log.info("webhook endpoint created", extra={"tenant_id": tenant.id, "endpoint_id": endpoint.id})
    return RegisteredEndpoint(endpoint.id, secret)
