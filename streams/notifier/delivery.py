"""One delivery attempt: POST the body, signed, to one endpoint, within a timeout.

The answer decides: 2xx delivered; 410 Gone means the endpoint asks to be stopped (the
queue disables it at once, Standard Webhooks' convention); everything else (3xx, 4xx, 5xx,
a timeout, a refused connection, a refused address) is a failure to retry, because a
receiver being redeployed answers all of those for a while. `Retry-After` (seconds) is
honoured as the least delay before the next attempt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from quotaflow.egress import refused_address
from streams.notifier.resolver import AddressRefused, GuardedResolver
from streams.notifier.signing import webhook_headers

__all__ = ["Attempt", "Deliverer"]

MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to. `outcome`: delivered, gone, failed, refused_address."""

    outcome: str
    status: int | None = None
    retry_after: float | None = None
    detail: str = ""

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


class Deliverer:
    """Owns the HTTP client; `start()` and `stop()` mirror each other."""

    def __init__(self, *, timeout: float, allow_private: bool) -> None:
        self._timeout = timeout
        self._allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allow_private=self._allow_private),
            limit=256,
            limit_per_host=8,
            ttl_dns_cache=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            auto_decompress=False,
        )

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _literal_refused(self, url: str) -> str | None:
        """aiohttp does not resolve an IP literal, so the guard looks at it here."""
        host = urlsplit(url).hostname or ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        if not self._allow_private and refused_address(address):
            return str(address)
        return None

    async def post(self, url: str, secret: str, msg_id: str, body: bytes) -> Attempt:
        session = self._session
        if session is None:
            raise RuntimeError("Deliverer is not started")
        refused = self._literal_refused(url)
        if refused is not None:
            return Attempt("refused_address", detail=refused)
        headers = webhook_headers(secret, msg_id, int(time.time()), body)
        try:
            async with asyncio.timeout(self._timeout):
                async with session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    await response.read()
                    status = response.status
                    retry_after = _retry_after(response.headers.get("Retry-After"))
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                return Attempt("refused_address", detail=exc.os_error.address)
            return Attempt("failed", detail=type(exc).__name__)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Attempt("failed", detail=type(exc).__name__)
        if 200 <= status < 300:
            return Attempt("delivered", status)
        if status == 410:
            return Attempt("gone", status)
        return Attempt("failed", status, retry_after, f"HTTP {status}")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return None
