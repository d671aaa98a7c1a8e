"""Where quotaflow may send a tenant's notifications: the SSRF guard.

A tenant names the URL; the notifier, inside the platform's network, calls it. Without a
guard a tenant could make the notifier call the metadata service, the admin API or the
broker. So an endpoint is refused when any address its host resolves to is loopback,
link-local, private, unspecified, multicast or reserved (IPv4-mapped IPv6 is unwrapped
first), unless `QUOTAFLOW_NOTIFY_ALLOW_PRIVATE` says otherwise.

The check runs twice: when the endpoint is configured (a clear refusal for the operator)
and at each delivery, where the connection is then made to the very address that was
checked (`Destination.address`), so a name that resolves to a public address at the check
and a private one at the connect (DNS rebinding) cannot slip between the two.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Destination", "DestinationRefused", "check_destination", "refused_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(Exception):
    """An endpoint URL quotaflow will not call; `reason` is machine-readable:
    `bad_url`, `unresolvable`, `private_address`."""

    def __init__(self, url_host: str, reason: str, detail: str = "") -> None:
        super().__init__(f"endpoint host {url_host!r} refused: {reason} {detail}".strip())
        self.host = url_host
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked endpoint: connect to `address` (what was checked), present `host`."""

    scheme: str
    host: str
    port: int
    address: str


def refused_address(address: IPAddress) -> bool:
    """Whether `address` is one no tenant may make the platform call."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or (isinstance(address, ipaddress.IPv4Address) and address in _SHARED)
    )


_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not public either


async def check_destination(url: str, *, allow_private: bool, timeout: float = 5.0) -> Destination:
    """Resolves `url`'s host (off the event loop, bounded) and returns where to connect;
    `DestinationRefused` when the URL is malformed, the name does not resolve or any of its
    addresses is refused."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise DestinationRefused(host or "", "bad_url", "need http(s)://host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise DestinationRefused(host, "bad_url", "bad port") from None
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        raise DestinationRefused(host, "unresolvable") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise DestinationRefused(host, "unresolvable")
    if not allow_private:
        bad = [a for a in addresses if refused_address(a)]
        if bad:
            raise DestinationRefused(host, "private_address", str(bad[0]))
    return Destination(parts.scheme, host, port, str(addresses[0]))
