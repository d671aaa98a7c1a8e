"""Console sessions and CSRF tokens: signed, short-lived, bound to the admin token that
opened them.

A session cookie is `<payload>.<mac>` (base64url): the payload names the admin token (its
name, the audit actor), when the session was opened, when it expires and a random nonce;
the MAC is HMAC-SHA256 under a key derived from that admin token itself. So the cookie
holds no secret, any replica with the same tokens accepts it, and removing a token from
`QUOTAFLOW_ADMIN_TOKENS` ends every session it opened.

The CSRF token of a session is HMAC(session key, nonce): rendered into every form, and every
change (a POST) must carry it; a request from another site has the cookie withheld
(SameSite=Strict) and cannot read the token. Logging out revokes the nonce in this process
until it would have expired anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson
from pydantic import SecretStr

__all__ = ["Session", "SessionKeys"]

_CONTEXT = b"quotaflow-console-session-v1"
# Revoked nonces kept at most (logouts of this process); the oldest go first.
MAX_REVOKED = 10_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session: `name` is the admin token's name."""

    name: str
    issued: float
    expires: float
    nonce: str

    @property
    def actor(self) -> str:
        """The audit actor of changes made through the console."""
        return f"console:{self.name}"


class SessionKeys:
    """Opens, verifies and revokes sessions for a fixed set of admin tokens."""

    def __init__(
        self,
        tokens: Mapping[str, SecretStr],
        ttl: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = {
            name: hmac.new(token.get_secret_value().encode(), _CONTEXT, hashlib.sha256).digest()
            for name, token in tokens.items()
        }
        self._tokens = dict(tokens)
        self._ttl = ttl
        self._clock = clock
        self._revoked: dict[str, float] = {}

    @property
    def ttl(self) -> float:
        return self._ttl

    def authenticate(self, presented: str) -> str | None:
        """The name of the admin token `presented`, or None; every token is compared in
        constant time, so timing says nothing about which one is close."""
        given = presented.strip().encode()
        found: str | None = None
        for name, token in self._tokens.items():
            if hmac.compare_digest(given, token.get_secret_value().encode()):
                found = name
        return found

    def open(self, name: str) -> tuple[Session, str]:
        """A new session for token `name` and its cookie value."""
        now = self._clock()
        session = Session(name, now, now + self._ttl, secrets.token_urlsafe(18))
        payload = orjson.dumps(
            {"n": session.name, "i": session.issued, "e": session.expires, "s": session.nonce}
        )
        mac = hmac.new(self._keys[name], payload, hashlib.sha256).digest()
        return session, f"{_b64(payload)}.{_b64(mac)}"

    def verify(self, cookie: str | None) -> Session | None:
        """The session a cookie carries if its MAC verifies, it has not expired and it was
        not revoked; None otherwise (whatever is wrong with it)."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload_text, mac_text = cookie.split(".")
        try:
            payload, mac = _unb64(payload_text), _unb64(mac_text)
            doc = orjson.loads(payload)
            name, issued, expires, nonce = doc["n"], doc["i"], doc["e"], doc["s"]
        except (ValueError, KeyError, TypeError):
            return None
        key = self._keys.get(name) if isinstance(name, str) else None
        if key is None:
            return None
        if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
            return None
        if not isinstance(expires, float | int) or expires <= self._clock():
            return None
        if nonce in self._revoked:
            return None
        return Session(name, float(issued), float(expires), str(nonce))

    def csrf_token(self, session: Session) -> str:
        """The synchronizer token every form of `session` carries."""
        key = self._keys[session.name]
        return _b64(hmac.new(key, b"csrf:" + session.nonce.encode(), hashlib.sha256).digest())

    def check_csrf(self, session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.csrf_token(session).encode()
        )

    def bind(self, session: Session, purpose: str) -> str:
        """A token proving this session was shown `purpose` (a dry run's selection, say)."""
        key = self._keys[session.name]
        message = f"bind:{session.nonce}:{purpose}".encode()
        return _b64(hmac.new(key, message, hashlib.sha256).digest())

    def check_bound(self, session: Session, purpose: str, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.bind(session, purpose).encode()
        )

    def revoke(self, session: Session) -> None:
        """Logout: the session's cookie stops verifying in this process."""
        now = self._clock()
        self._revoked = {n: e for n, e in self._revoked.items() if e > now}
        while len(self._revoked) >= MAX_REVOKED:
            self._revoked.pop(next(iter(self._revoked)))
        self._revoked[session.nonce] = session.expires
