"""One `stripe.StripeClient` per tenant and key, over one shared HTTP client.

The worker's Stripe reader and its meter client both call Stripe with each tenant's own
key. Clients are kept by tenant and key value (the client holds the key in memory anyway;
it is never logged), so a rotated key gets a fresh client while a tenant document the
registry builds again (its cache is bounded) does not make a new one.
"""

from __future__ import annotations

from typing import Any

import stripe

from tables.tenant import Tenant


class StripeClients:
    """Stripe clients of many tenants; `close()` closes their shared HTTP client."""

    def __init__(
        self,
        *,
        api_base: str | None,
        max_network_retries: int,
        http_client: stripe.AIOHTTPClient | None = None,
    ) -> None:
        self._bases: Any = {"api": api_base} if api_base else None
        self._retries = max_network_retries
        self._clients: dict[tuple[str, str], stripe.StripeClient] = {}
        # Created on first use unless given (the worker passes one that counts requests).
        self._http = http_client

    def get(self, tenant: Tenant) -> stripe.StripeClient | None:
        """The tenant's client; None when the tenant has no Stripe key."""
        if tenant.stripe_api_key is None:
            return None
        key = tenant.stripe_api_key.get_secret_value()
        client = self._clients.get((tenant.id, key))
        if client is None:
            if self._http is None:
                self._http = stripe.AIOHTTPClient()
            client = stripe.StripeClient(
                key,
                stripe_account=tenant.stripe_account,
                base_addresses=self._bases,
                max_network_retries=self._retries,
                http_client=self._http,
            )
            self._clients[(tenant.id, key)] = client
        return client

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close_async()  # type: ignore[no-untyped-call]
            self._http = None
