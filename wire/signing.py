"""The signed-message format of every message between quotaflow's faces.

Header: ``X-Quotaflow-Signature: t=<unix seconds>,k=<key id>,ed25519=<base64url>``.
The signature is Ed25519 over

    b"quotaflow/<kind>/v1\\n" + b"<t>\\n" + body

where `<kind>` names what the message is (`Kind`: `push`, `usage`, `node-announcement`,
`tenant-record`).
The context comes first and is part of what is signed, so a signature of one kind never
verifies as another, whoever holds which key.

Keys are Ed25519: a private key (base64 of its 32-byte seed) signs, its public key
(base64 of 32 bytes) only verifies, so a holder of public keys can never sign. A key id is
the first 16 hex characters of SHA-256 of the public key: it names a key in headers, logs
and metrics without revealing anything. Rotation: several keys verify, the newest (first)
signs; add the new public key to verifiers first, then switch signers, then drop the old.

Verification checks cheapest-first: header shape, known key id, timestamp window (both
directions), signature, then replay (a signature accepted once is refused again within
the window; the cache records only signatures that verified, so unsigned traffic cannot
fill it). `verify_record` checks only the signature, for records re-read from a topic
whose freshness comes from their signed content.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wire.exceptions import SignatureError

__all__ = [
    "MAX_HEADER_LENGTH",
    "REGION_HTTP_HEADER",
    "SIGNATURE_HEADER",
    "Kind",
    "ReplayCache",
    "Signer",
    "Verifier",
    "generate_keypair",
    "key_id",
    "parse_header",
    "public_key_id",
    "public_key_of",
    "signed_message",
]

SIGNATURE_HEADER = "X-Quotaflow-Signature"
# The region a signed edge message (usage report, node announcement) speaks for: it picks
# the verify keys, so it travels beside the signature, outside the signed body's parse.
REGION_HTTP_HEADER = "X-Quotaflow-Region"
MAX_HEADER_LENGTH = 512
_SIGNATURE_B64_LENGTH = 86  # 64 bytes, base64url without padding

Clock = Callable[[], float]


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


KeyMaterial = str | bytes | _Secret


class Kind(enum.Enum):
    """What a signed message is; each kind has its own context string."""

    PUSH = "push"
    USAGE = "usage"
    ANNOUNCEMENT = "node-announcement"
    TENANT = "tenant-record"

    @property
    def context(self) -> bytes:
        return b"quotaflow/%s/v1\n" % self.value.encode()


def signed_message(kind: Kind, timestamp: int, body: bytes) -> bytes:
    """The exact bytes a signature of `kind` covers."""
    return kind.context + b"%d\n" % timestamp + body


def _raw(material: KeyMaterial) -> bytes:
    if not isinstance(material, str | bytes):
        material = material.get_secret_value()
    text = material.decode("ascii", "replace") if isinstance(material, bytes) else material
    text = text.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError("an Ed25519 key is base64 of 32 bytes")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def key_id(public_raw: bytes) -> str:
    """A key's public name: first 16 hex chars of SHA-256 of the raw public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def generate_keypair() -> tuple[str, str]:
    """A fresh (private, public) key pair, each base64 of 32 bytes."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    return _b64(seed), _b64(private.public_key().public_bytes_raw())


def public_key_of(private: KeyMaterial) -> str:
    """The public key (base64) of a private key (base64)."""
    key = Ed25519PrivateKey.from_private_bytes(_raw(private))
    return _b64(key.public_key().public_bytes_raw())


def public_key_id(public: KeyMaterial) -> str:
    """The key id of a public key (base64); `ValueError` if it is not one."""
    return _verify_key(public).id


@dataclass(frozen=True, slots=True)
class _SigningKey:
    key: Ed25519PrivateKey = field(repr=False)
    id: str


@dataclass(frozen=True, slots=True)
class _VerifyKey:
    key: Ed25519PublicKey = field(repr=False)
    id: str


def _signing_key(material: KeyMaterial) -> _SigningKey:
    key = Ed25519PrivateKey.from_private_bytes(_raw(material))
    return _SigningKey(key, key_id(key.public_key().public_bytes_raw()))


def _verify_key(material: KeyMaterial) -> _VerifyKey:
    raw = _raw(material)
    return _VerifyKey(Ed25519PublicKey.from_public_bytes(raw), key_id(raw))


class Signer:
    """Signs messages of one kind with the newest of its private keys."""

    def __init__(
        self, kind: Kind, keys: Sequence[KeyMaterial], *, clock: Clock = time.time
    ) -> None:
        if not keys:
            raise ValueError(f"no {kind.value} signing key configured")
        self.kind = kind
        self._key = _signing_key(keys[0])
        self._clock = clock

    def __repr__(self) -> str:
        return f"Signer(kind={self.kind.value!r}, key_id={self._key.id!r})"

    @property
    def key_id(self) -> str:
        return self._key.id

    def header(self, body: bytes) -> str:
        """The signature header value for `body`, signed now."""
        timestamp = int(self._clock())
        signature = self._key.key.sign(signed_message(self.kind, timestamp, body))
        encoded = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        return f"t={timestamp},k={self._key.id},ed25519={encoded}"

    def headers(self, body: bytes) -> dict[str, str]:
        return {SIGNATURE_HEADER: self.header(body)}


@dataclass(frozen=True, slots=True)
class _Parsed:
    timestamp: int
    key_id: str
    signature: bytes


def parse_header(header: str | None) -> _Parsed:
    """Parses `t=..,k=..,ed25519=..`; anything else is `malformed_signature`."""
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
    t, k, sig = items.get("t"), items.get("k"), items.get("ed25519")
    if t is None or k is None or sig is None:
        raise SignatureError("malformed_signature")
    if not (t.isascii() and t.isdigit() and len(t) <= 12):
        raise SignatureError("malformed_signature")
    if len(sig) != _SIGNATURE_B64_LENGTH or not sig.isascii():
        raise SignatureError("malformed_signature")
    try:
        raw = base64.urlsafe_b64decode(sig + "==")
    except (binascii.Error, ValueError):
        raise SignatureError("malformed_signature") from None
    return _Parsed(int(t), k, raw)


class ReplayCache:
    """Signatures accepted within the window, bounded in size.

    Entries expire when their timestamp leaves the window (a replay after that is `stale`
    anyway). Insertion order is near expiry order, so expired entries are purged from the
    front; at capacity the oldest entry is evicted (counted in `evicted`).
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._capacity = capacity
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, signature: bytes, now: float) -> bool:
        self._purge(now)
        return signature in self._seen

    def add(self, signature: bytes, expires_at: float) -> None:
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


class Verifier:
    """Verifies messages of one kind against public keys; raises `SignatureError(reason)`.

    Reasons: `missing_signature`, `malformed_signature`, `no_keys`, `unknown_key`, `stale`,
    `future`, `bad_signature`, `replayed`.
    """

    def __init__(
        self,
        kind: Kind,
        keys: Sequence[KeyMaterial],
        *,
        tolerance: float = 30.0,
        clock: Clock = time.time,
        replay_capacity: int = 200_000,
    ) -> None:
        self.kind = kind
        self._keys = {k.id: k for k in (_verify_key(m) for m in keys)}
        self._tolerance = tolerance
        self._clock = clock
        self._replays = ReplayCache(replay_capacity)

    def __repr__(self) -> str:
        return f"Verifier(kind={self.kind.value!r}, key_ids={self.key_ids!r})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def _check(self, parsed: _Parsed, body: bytes) -> _VerifyKey:
        if not self._keys:
            raise SignatureError("no_keys")
        key = self._keys.get(parsed.key_id)
        if key is None:
            raise SignatureError("unknown_key")
        return key

    def _valid(self, key: _VerifyKey, parsed: _Parsed, body: bytes) -> bool:
        try:
            key.key.verify(parsed.signature, signed_message(self.kind, parsed.timestamp, body))
        except InvalidSignature:
            return False
        return True

    def verify(self, header: str | None, body: bytes) -> str:
        """Returns the id of the key that verified; raises `SignatureError` otherwise."""
        parsed = parse_header(header)
        key = self._check(parsed, body)
        now = self._clock()
        if parsed.timestamp < now - self._tolerance:
            raise SignatureError("stale")
        if parsed.timestamp > now + self._tolerance:
            raise SignatureError("future")
        if not self._valid(key, parsed, body):
            raise SignatureError("bad_signature")
        if self._replays.seen(parsed.signature, now):
            raise SignatureError("replayed")
        self._replays.add(parsed.signature, parsed.timestamp + self._tolerance)
        return key.id

    def verify_record(self, header: str | None, body: bytes) -> str:
        """Signature only (any age, no replay check): for records re-read from a topic."""
        parsed = parse_header(header)
        key = self._check(parsed, body)
        if not self._valid(key, parsed, body):
            raise SignatureError("bad_signature")
        return key.id
