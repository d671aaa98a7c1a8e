"""The SSRF guard where it counts: in the resolver the delivery's connection uses.

`quotaflow.egress` refuses an endpoint at configuration; a name can resolve elsewhere
later (DNS rebinding), so every connection the notifier opens resolves through
`GuardedResolver`, which hands aiohttp only addresses it has checked: the address
checked is the address connected to.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from quotaflow.egress import refused_address

__all__ = ["AddressRefused", "GuardedResolver"]


class AddressRefused(OSError):
    """The endpoint's host resolved to an address the notifier may not call."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to a refused address")
        self.host = host
        self.address = address


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, refusing private addresses unless allowed."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for result in results:
                address = ipaddress.ip_address(str(result["host"]).split("%", 1)[0])
                if refused_address(address):
                    raise AddressRefused(host, str(address))
        return results

    async def close(self) -> None:
        await self._inner.close()

    def __repr__(self) -> str:
        return f"GuardedResolver(allow_private={self._allow_private})"

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - aiohttp internals
        return getattr(self._inner, name)
