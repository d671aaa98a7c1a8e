"""Push signing, shared by the regional pusher (signs) and the edge sidecar (verifies).

Header: ``X-Quotaflow-Signature: t=<unix seconds>,k=<key id>,v1=<hex>`` where ``v1`` is
HMAC-SHA256 with the region's key over ``b"<t>." + body``. The key id is the first 8 hex
characters of SHA-256 of the key: it names a key in logs and headers without revealing it.

A region has one key, or two during a rotation (settings.push_keys[region], newest first:
the newest signs, both verify). A push is refused when its timestamp is outside the window
(settings.push_tolerance, both directions) or when the same signature was already accepted
within that window (replay). Checks run cheapest-first and the replay cache only records
signatures that verified, so unsigned traffic cannot fill it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import SecretStr

from edge.exceptions import SignatureError
from quotaflow.settings import Settings

SIGNATURE_HEADER = "X-Quotaflow-Signature"
MAX_HEADER_LENGTH = 512

Clock = Callable[[], float]
KeyMaterial = SecretStr | str | bytes


def key_id(secret: bytes) -> str:
    """A key's public name: first 8 hex chars of its SHA-256."""
    return hashlib.sha256(secret).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class PushKey:
    """One signing key. `secret` is kept out of repr."""

    secret: bytes = field(repr=False)
    id: str = ""

    @classmethod
    def of(cls, material: KeyMaterial) -> PushKey:
        if isinstance(material, SecretStr):
            material = material.get_secret_value()
        raw = material.encode() if isinstance(material, str) else material
        if not raw:
            raise ValueError("a push key must not be empty")
        return cls(secret=raw, id=key_id(raw))


def _keys(materials: Sequence[KeyMaterial]) -> tuple[PushKey, ...]:
    return tuple(PushKey.of(m) for m in materials)


def region_keys(settings: Settings, region: str) -> tuple[PushKey, ...]:
    """The region's keys from settings, newest first; empty if none are configured."""
    return _keys(settings.push_keys.get(region, []))


def compute_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign(body: bytes, key: PushKey, timestamp: int) -> str:
    """The header value for `body` signed with `key` at `timestamp`."""
    return f"t={timestamp},k={key.id},v1={compute_signature(key.secret, timestamp, body)}"


class PushSigner:
    """Signs push bodies with a region's newest key."""

    def __init__(self, keys: Sequence[KeyMaterial], *, clock: Clock = time.time) -> None:
        parsed = _keys(keys)
        if not parsed:
            raise ValueError("no push key configured")
        self._key = parsed[0]
        self._clock = clock

    @classmethod
    def for_region(cls, settings: Settings, region: str) -> PushSigner:
        return cls(settings.push_keys.get(region, []))

    @property
    def key_id(self) -> str:
        return self._key.id

    def header(self, body: bytes) -> str:
        return sign(body, self._key, int(self._clock()))

    def headers(self, body: bytes) -> dict[str, str]:
        return {SIGNATURE_HEADER: self.header(body)}


@dataclass(frozen=True, slots=True)
class _Parsed:
    timestamp: int
    key_id: str | None
    v1: str


def parse_header(header: str | None) -> _Parsed:
    """Parses `t=..,k=..,v1=..`; anything else is `malformed_signature`."""
    if header is None or not header.strip():
        raise SignatureError("missing_signature")
    if len(header) > MAX_HEADER_LENGTH:
        raise SignatureError("malformed_signature")
    items: dict[str, str] = {}
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name in items:
            raise SignatureError("malformed_signature")
        items[name] = value.strip()
    t, v1 = items.get("t"), items.get("v1")
    if t is None or v1 is None:
        raise SignatureError("malformed_signature")
    if not (t.isascii() and t.isdigit() and len(t) <= 12):
        raise SignatureError("malformed_signature")
    v1 = v1.lower()
    if len(v1) != 64 or any(c not in "0123456789abcdef" for c in v1):
        raise SignatureError("malformed_signature")
    return _Parsed(int(t), items.get("k"), v1)


class ReplayCache:
    """Signatures accepted within the window, bounded in size.

    Entries expire when their timestamp leaves the window (a replay after that is `stale`
    anyway). Insertion order is near expiry order, so expired entries are purged from the
    front; at capacity the oldest entry is evicted (counted in `evicted`): with only the
    pusher able to sign, capacity is sized far above a window's worth of pushes.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._capacity = capacity
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, signature: str, now: float) -> bool:
        self._purge(now)
        return signature in self._seen

    def add(self, signature: str, expires_at: float) -> None:
        self._seen[signature] = expires_at
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
            self.evicted += 1

    def _purge(self, now: float) -> None:
        seen = self._seen
        while seen:
            first = next(iter(seen))
            if seen[first] >= now:
                return
            del seen[first]


class PushVerifier:
    """Verifies push signatures against a region's keys; raises `SignatureError(reason)`.

    Reasons: `missing_signature`, `malformed_signature`, `no_keys`, `unknown_key`, `stale`,
    `future`, `bad_signature`, `replayed`.
    """

    def __init__(
        self,
        keys: Sequence[KeyMaterial],
        *,
        tolerance: float = 30.0,
        clock: Clock = time.time,
        replay_capacity: int = 200_000,
    ) -> None:
        self._keys = _keys(keys)
        self._by_id = {k.id: k for k in self._keys}
        self._tolerance = tolerance
        self._clock = clock
        self._replays = ReplayCache(replay_capacity)

    @classmethod
    def for_region(cls, settings: Settings, region: str) -> PushVerifier:
        return cls(settings.push_keys.get(region, []), tolerance=settings.push_tolerance)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.id for k in self._keys)

    def verify(self, header: str | None, body: bytes) -> str:
        """Returns the id of the key that verified; raises `SignatureError` otherwise."""
        parsed = parse_header(header)
        if not self._keys:
            raise SignatureError("no_keys")
        if parsed.key_id is not None:
            key = self._by_id.get(parsed.key_id)
            if key is None:
                raise SignatureError("unknown_key")
            candidates: tuple[PushKey, ...] = (key,)
        else:
            candidates = self._keys
        now = self._clock()
        if parsed.timestamp < now - self._tolerance:
            raise SignatureError("stale")
        if parsed.timestamp > now + self._tolerance:
            raise SignatureError("future")
        for key in candidates:
            expected = compute_signature(key.secret, parsed.timestamp, body)
            if hmac.compare_digest(expected, parsed.v1):
                if self._replays.seen(expected, now):
                    raise SignatureError("replayed")
                self._replays.add(expected, parsed.timestamp + self._tolerance)
                return key.id
        raise SignatureError("bad_signature")
