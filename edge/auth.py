"""Who may ask the edge to check and consume: bearer tokens per calling application.

A token is a high-entropy random string (`generate_app_token`: `qfa_` + 32 random bytes in
base64url) that a calling application (the Rating API, a gateway) sends as
`Authorization: Bearer <token>`. The edge holds only each token's SHA-256 digest
(`QUOTAFLOW_EDGE_APP_TOKENS`, `{"app": "<hex digest>"}` or `{"app": ["new", "old"]}` while a
token rotates), so its configuration, its memory and a dump of either hold no usable
token. A presented token is hashed and compared with every configured digest in constant
time (`hmac.compare_digest`, no early exit), and names the application it belongs to.

A plain hash suffices (no salt, no slow KDF): the tokens are 256-bit random, not
passwords, so no dictionary or brute force reaches them from a digest.

Loopback callers (127.0.0.0/8, ::1, and IPv4-mapped loopback) may be let in without a
token, but only when `QUOTAFLOW_EDGE_ALLOW_LOOPBACK` says so: a proxy on the same host
that forwards outside traffic to the edge would otherwise open it to everyone. They are
all one application, `loopback`. A request that presents a credential is judged by it,
wherever it comes from: a wrong token is refused even from loopback, so a misconfigured
caller is told at once rather than silently attributed to `loopback`.

Nothing here logs, stores or returns a token, and the reasons carry no part of one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache

from edge.exceptions import EdgeError

__all__ = [
    "APP_NAME_PATTERN",
    "BAD_CREDENTIAL",
    "LOOPBACK_APP",
    "MISSING_CREDENTIAL",
    "TOKEN_PREFIX",
    "AppAuth",
    "AuthError",
    "generate_app_token",
    "is_loopback",
    "normalise_digests",
    "token_digest",
]

TOKEN_PREFIX = "qfa_"  # noqa: S105 - a prefix, recognisable in a leak or by a scanner
LOOPBACK_APP = "loopback"  # the one application name loopback callers get (a metric label)
APP_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"  # bounded and safe as a metric label
MISSING_CREDENTIAL = "missing_credential"
BAD_CREDENTIAL = "bad_credential"

_APP_NAME = re.compile(APP_NAME_PATTERN)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# Longer than any token we issue by far; a longer header is refused before it is hashed.
_MAX_TOKEN_LENGTH = 512


class AuthError(EdgeError):
    """A request without a usable credential; `reason` is the 401 body's reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def generate_app_token() -> str:
    """A fresh application token: shown once to its holder, never stored by the edge."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the edge holds for `token`: SHA-256 of its UTF-8 bytes, lowercase hex."""
    return hashlib.sha256(token.encode()).hexdigest()


@lru_cache(maxsize=1024)
def is_loopback(remote: str | None) -> bool:
    """Whether a peer address (`request.remote`) is a loopback address.

    Cached: a node sees few distinct peers, and this is on the request path. A unix socket
    peer (no address) is not loopback here.
    """
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _check_name(name: str) -> None:
    if not _APP_NAME.match(name):
        raise ValueError(f"application name {name!r} must match {APP_NAME_PATTERN}")
    if name == LOOPBACK_APP:
        raise ValueError(f"{LOOPBACK_APP!r} is reserved for loopback callers")


def normalise_digests(value: object) -> dict[str, list[str]]:
    """`{"app": "digest"}` or `{"app": ["new", "old"]}` → `{"app": ["new", "old"]}`, checked.

    Raises ValueError naming what is wrong. Digests are not secrets (a token cannot be
    recovered from one), so an error may show them.
    """
    if not isinstance(value, Mapping):
        raise ValueError('expected a JSON object {"app": "<sha256 hex>"}')
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name, digests in value.items():
        if not isinstance(name, str):
            raise ValueError("application names are strings")
        _check_name(name)
        listed: Sequence[object] = [digests] if isinstance(digests, str) else digests
        if not isinstance(listed, Sequence) or not listed:
            raise ValueError(f"{name}: expected a digest or a non-empty list of digests")
        clean: list[str] = []
        for digest in listed:
            if not isinstance(digest, str) or not _DIGEST.match(digest.strip().lower()):
                raise ValueError(
                    f"{name}: a digest is 64 hex characters (`quotaflow keys "
                    "generate-app-token` prints it); never put the token itself here"
                )
            digest = digest.strip().lower()
            if digest in seen:
                raise ValueError(f"{name}: digest also listed for {seen[digest]}")
            seen[digest] = name
            clean.append(digest)
        out[name] = clean
    return out


class AppAuth:
    """Authenticates a request's `Authorization` header and peer to an application name.

    `digests`: application name → SHA-256 hex digests of its tokens (several during a
    rotation). `allow_loopback`: loopback peers without a credential are `loopback`.
    """

    def __init__(
        self, digests: Mapping[str, Sequence[str]] | None = None, *, allow_loopback: bool = False
    ) -> None:
        clean = normalise_digests(dict(digests or {}))
        self._entries: tuple[tuple[bytes, str], ...] = tuple(
            (bytes.fromhex(d), name) for name, ds in clean.items() for d in ds
        )
        self.apps: tuple[str, ...] = tuple(sorted(clean))
        self.allow_loopback = allow_loopback

    @property
    def labels(self) -> tuple[str, ...]:
        """Every application name a request can be attributed to (bounded metric labels)."""
        return (*self.apps, LOOPBACK_APP) if self.allow_loopback else self.apps

    @property
    def refuses_everyone(self) -> bool:
        """No token configured and loopback not allowed: every caller gets 401."""
        return not self._entries and not self.allow_loopback

    def authenticate(self, authorization: str | None, remote: str | None) -> str:
        """The calling application's name, or `AuthError(missing_credential|bad_credential)`."""
        if authorization is None:
            if self.allow_loopback and is_loopback(remote):
                return LOOPBACK_APP
            raise AuthError(MISSING_CREDENTIAL)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            # Basic, a bare token, "Bearer" alone: a credential we cannot use.
            raise AuthError(BAD_CREDENTIAL)
        if len(token) > _MAX_TOKEN_LENGTH:
            raise AuthError(BAD_CREDENTIAL)
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        # Every entry is compared (no early exit), each in constant time: how long the
        # answer takes says nothing about which digest, or how much of one, matched.
        for digest, name in self._entries:
            if hmac.compare_digest(presented, digest):
                found = name
        if found is None:
            raise AuthError(BAD_CREDENTIAL)
        return found
