"""Notification endpoints of a tenant: add (with a new signing secret), remove, enable and
disable, through the `TenantWriter` (sealed, signed, audited like every tenant change).

Each endpoint's secret is made here (`whsec_` + base64 of 32 random bytes, the Standard
Webhooks format), sealed in the tenant record like the other secrets, and returned once,
by `add`; afterwards every view masks it. The URL passes the SSRF guard
(`quotaflow.egress`) before it is stored; the notifier checks it again at each delivery.
"""

from __future__ import annotations

import asyncio
import base64
import secrets as token_source
import time
from collections.abc import Sequence
from typing import Any

from quotaflow.commands.tenants.documents import plain_document
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.egress import DestinationRefused, check_destination
from quotaflow.tenants.exceptions import InvalidTenant, TenantNotFound, TenantStateError
from tables.tenant import NOTIFICATION_TYPES, NotificationEndpoint, Tenant

__all__ = ["EndpointAdmin", "new_endpoint_secret"]


def new_endpoint_secret() -> str:
    """A fresh Standard Webhooks signing secret."""
    return "whsec_" + base64.b64encode(token_source.token_bytes(32)).decode()


class EndpointAdmin:
    """Endpoint changes of one writer, serialised (each is a read-modify-write of the list)."""

    def __init__(self, writer: TenantWriter, *, allow_private: bool) -> None:
        self._writer = writer
        self._allow_private = allow_private
        self._lock = asyncio.Lock()

    def _tenant(self, tenant_id: str) -> Tenant:
        tenant = self._writer.registry.get(tenant_id)
        if tenant is None:
            raise TenantNotFound(tenant_id)
        return tenant

    async def add(
        self,
        tenant_id: str,
        url: str,
        actor: str,
        *,
        event_types: Sequence[str] | None = None,
        thresholds: Sequence[float] | None = None,
        feature: str | None = None,
    ) -> tuple[NotificationEndpoint, str]:
        """Adds an endpoint; returns it and its signing secret (shown this once)."""
        try:
            await check_destination(url, allow_private=self._allow_private)
        except DestinationRefused as exc:
            raise InvalidTenant("notification_endpoints.url", str(exc)) from None
        secret = new_endpoint_secret()
        endpoint: dict[str, Any] = {
            "id": f"ep_{token_source.token_hex(8)}",
            "url": url,
            "event_types": list(event_types) if event_types else list(NOTIFICATION_TYPES),
            "thresholds": list(thresholds) if thresholds else [0.8],
            "feature": feature,
            "secret": secret,
            "created_at": time.time(),
        }
        async with self._lock:
            current = plain_document(self._tenant(tenant_id))["notification_endpoints"]
            tenant = await self._writer.update(
                tenant_id,
                {"notification_endpoints": [*current, endpoint]},
                actor,
                action="add-notification-endpoint",
                endpoint_id=endpoint["id"],
            )
        added = next(e for e in tenant.notification_endpoints if e.id == endpoint["id"])
        return added, secret

    async def remove(self, tenant_id: str, endpoint_id: str, actor: str) -> Tenant:
        async with self._lock:
            current = plain_document(self._tenant(tenant_id))["notification_endpoints"]
            kept = [e for e in current if e["id"] != endpoint_id]
            if len(kept) == len(current):
                raise TenantStateError(tenant_id, f"no notification endpoint {endpoint_id}")
            return await self._writer.update(
                tenant_id,
                {"notification_endpoints": kept},
                actor,
                action="remove-notification-endpoint",
                endpoint_id=endpoint_id,
            )

    async def set_enabled(
        self, tenant_id: str, endpoint_id: str, enabled: bool, actor: str, reason: str = ""
    ) -> Tenant:
        """Enables (clearing the disable record) or disables an endpoint. The notifier
        disables one that failed for a day with `reason`; an operator enables it again."""
        async with self._lock:
            current = plain_document(self._tenant(tenant_id))["notification_endpoints"]
            if not any(e["id"] == endpoint_id for e in current):
                raise TenantStateError(tenant_id, f"no notification endpoint {endpoint_id}")
            changed = [
                {
                    **e,
                    "enabled": enabled,
                    "disabled_at": None if enabled else time.time(),
                    "disabled_reason": None if enabled else (reason or "disabled by an operator"),
                }
                if e["id"] == endpoint_id
                else e
                for e in current
            ]
            return await self._writer.update(
                tenant_id,
                {"notification_endpoints": changed},
                actor,
                action=f"{'enable' if enabled else 'disable'}-notification-endpoint",
                endpoint_id=endpoint_id,
                reason=reason or None,
            )
