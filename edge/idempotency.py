"""`Idempotency-Key` on `POST /v1/consume`: a retried call counts once.

The first answer to a key is kept, scoped per authenticated application (two applications
may use the same key for different calls), together with what was asked (tenant,
customer, cost, feature). A retry with the same key and the same request gets that first answer
again, byte for byte, and counts nothing; the same key with a different request is a
client bug and is refused (`KeyReused` → 422 `idempotency_key_reused`), as Stripe does.

Bounded memory, per application, so one caller's keys never evict another's:
- a key lives `ttl` seconds from its first use (a replay does not extend it);
- at most `max_keys` keys are held; past it the oldest go first.
Keys are kept in insertion order, which is also expiry order (one ttl for all), so both
bounds are enforced from the front of one ordered dict, amortised O(1) per call.

What this does not cover (README, HTTP routes): the keys live in this process only, so a
retry that reaches another node, or this node after a restart, counts again.

Single event loop, no awaits: the server looks up, consumes and stores in one synchronous
step, so two concurrent requests with the same key cannot both count.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from edge.exceptions import EdgeError

__all__ = ["MAX_KEY_LENGTH", "IdempotencyCache", "KeyReused", "Request", "valid_key"]

MAX_KEY_LENGTH = 255  # Stripe's limit; a UUID or a request id fits easily

# What a consume asked: (tenant_id, customer_id, cost, feature).
Request = tuple[str, str, int, str | None]


class KeyReused(EdgeError):
    """The key was first used for a different request."""


def valid_key(key: str) -> bool:
    """1 to 255 printable ASCII characters (no spaces or controls)."""
    return 0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable() and " " not in key


class _Entry:
    __slots__ = ("answer", "expires", "request")

    def __init__(self, request: Request, answer: bytes, expires: float) -> None:
        self.request = request
        self.answer = answer
        self.expires = expires


class IdempotencyCache:
    """First answers by (application, key), each application bounded on its own."""

    def __init__(
        self,
        *,
        max_keys: int = 50_000,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_keys < 1 or ttl <= 0:
            raise ValueError("max_keys >= 1 and ttl > 0")
        self.max_keys = max_keys
        self.ttl = ttl
        self._clock = clock
        self._apps: dict[str, OrderedDict[str, _Entry]] = {}

    def lookup(self, app: str, key: str, request: Request) -> bytes | None:
        """The first answer to `key` if it is still held, else None; `KeyReused` if the key
        was first used for another request."""
        keys = self._apps.get(app)
        if keys is None:
            return None
        entry = keys.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del keys[key]
            return None
        if entry.request != request:
            raise KeyReused(key)
        return entry.answer

    def store(self, app: str, key: str, request: Request, answer: bytes) -> None:
        """Keeps `answer` as the first answer to `key`, then enforces both bounds."""
        keys = self._apps.get(app)
        if keys is None:
            keys = self._apps[app] = OrderedDict()
        now = self._clock()
        keys.pop(key, None)  # re-inserted at the end: the order stays the expiry order
        keys[key] = _Entry(request, answer, now + self.ttl)
        while keys:
            oldest = next(iter(keys.values()))
            if oldest.expires > now and len(keys) <= self.max_keys:
                break
            keys.popitem(last=False)

    def held(self) -> dict[str, int]:
        """Keys held per application (expired ones included until they are swept)."""
        return {app: len(keys) for app, keys in self._apps.items()}

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._apps.values())
