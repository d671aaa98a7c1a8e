"""Trust shared between the workers of one port (`quotaflow ingress --workers N`).

The kernel spreads a sender's connections over the workers, so a Stripe address that
delivered through worker A must be trusted by worker B too, or a distributed attacker
who drained B's route budget would turn Stripe away from B. The parent creates a small
file-backed table (1 MiB, mapped into every worker with `mmap`) and names it in
`TRUST_TABLE_ENV`; each worker records a verified (route, source) pair in it and looks
pairs up in it.

A slot holds (64-bit key hash, time it was trusted); a pair lands in the slot its hash
picks, overwriting any other pair there (trust is a cache: losing it costs the sender
only the ordinary unverified budgets). Writes are not locked: a torn slot reads as a
key mismatch or as a fresh stamp for a hash that was just written, never as trust for
a pair nobody verified (the key must match in full).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import tempfile
from pathlib import Path

__all__ = ["TRUST_TABLE_ENV", "SharedTrust"]

TRUST_TABLE_ENV = "QUOTAFLOW_INGRESS_TRUST_TABLE"
_SLOT = struct.Struct("<Qd")


def _key(route: str, source: str) -> int:
    digest = hashlib.blake2b(f"{route}\0{source}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") | 1  # 0 marks an empty slot


class SharedTrust:
    """A fixed table of trusted pairs in a mapped file; see the module docstring."""

    def __init__(self, path: Path, *, owner: bool = False) -> None:
        self.path = path
        self._owner = owner
        with path.open("r+b") as f:
            self._map = mmap.mmap(f.fileno(), 0)
        self._slots = len(self._map) // _SLOT.size

    @classmethod
    def create(cls, slots: int = 65_536) -> SharedTrust:
        """The parent's table (zeroed); `close()` removes it."""
        fd, name = tempfile.mkstemp(prefix="quotaflow-trust-")
        os.ftruncate(fd, slots * _SLOT.size)
        os.close(fd)
        return cls(Path(name), owner=True)

    @classmethod
    def from_environment(cls) -> SharedTrust | None:
        """The table the parent named in the environment, if any."""
        name = os.environ.get(TRUST_TABLE_ENV)
        return cls(Path(name)) if name else None

    def put(self, route: str, source: str, stamp: float) -> None:
        key = _key(route, source)
        _SLOT.pack_into(self._map, (key % self._slots) * _SLOT.size, key, stamp)

    def get(self, route: str, source: str) -> float | None:
        """When the pair was last trusted, or None."""
        key = _key(route, source)
        found, stamp = _SLOT.unpack_from(self._map, (key % self._slots) * _SLOT.size)
        return stamp if found == key else None

    def close(self) -> None:
        self._map.close()
        if self._owner:
            self.path.unlink(missing_ok=True)
