"""The registry's compact per-tenant state: what 100,000 tenants cost in memory.

Per tenant the registry keeps an `Entry`: the accepted record packed (`packing`, ~250
bytes), its version, its `TenantSummary` (a few dozen bytes), and, until they are checked,
the packed records read for it. No document is built until a tenant is used; the built
documents (secrets decrypted: `Tenant`) sit in a bounded `TenantCache`. `AccountIndex`
maps a Connect account to the tenants that may hold it, in a string per account.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from quotaflow.registry import TenantSummary
from tables.tenant import Tenant

__all__ = ["TOMBSTONE", "AccountIndex", "Entry", "TenantCache"]

TOMBSTONE = b""
"""A bare Kafka tombstone among the pending records (a packed record is never empty)."""


@dataclass(slots=True)
class Entry:
    """One tenant id's state in a registry."""

    held: bytes | None = None
    """The accepted record (live or deleted), packed; None until one is accepted."""
    version: int = 0
    """The accepted record's version (0: none): a later record must be above it."""
    summary: TenantSummary | None = None
    """The accepted live record's summary; None if none or deleted."""
    pending: bytes | list[bytes] | None = None
    """Records read but not checked yet (signature, version, opening), packed, in topic
    order: one as bytes, several as a list. Nothing is acted on before they are checked."""

    def take_pending(self) -> list[bytes]:
        pending, self.pending = self.pending, None
        if pending is None:
            return []
        return [pending] if isinstance(pending, bytes) else pending

    def add_pending(self, packed: bytes) -> None:
        if self.pending is None:
            self.pending = packed
        elif isinstance(self.pending, bytes):
            self.pending = [self.pending, packed]
        else:
            self.pending.append(packed)


class AccountIndex:
    """Connect account -> the ids of tenants that may hold it: one id as a string, several
    as a tuple (a set per account would cost ~200 bytes each).

    It may hold more than the truth (an unchecked record's claim, an account a tenant let
    go): readers check each candidate's accepted summary. It never holds less: an
    accepted record's account and every pending record's claim are added."""

    def __init__(self) -> None:
        self._ids: dict[str, str | tuple[str, ...]] = {}

    def add(self, account: str, tenant_id: str) -> None:
        held = self._ids.get(account)
        if held is None:
            self._ids[account] = tenant_id
        elif isinstance(held, str):
            if held != tenant_id:
                self._ids[account] = (held, tenant_id)
        elif tenant_id not in held:
            self._ids[account] = (*held, tenant_id)

    def candidates(self, account: str) -> tuple[str, ...]:
        held = self._ids.get(account)
        if held is None:
            return ()
        return (held,) if isinstance(held, str) else held

    def replace(self, account: str, tenant_ids: list[str]) -> None:
        """Narrows `account` to `tenant_ids` once every candidate has been checked."""
        if not tenant_ids:
            self._ids.pop(account, None)
        else:
            self._ids[account] = tenant_ids[0] if len(tenant_ids) == 1 else tuple(tenant_ids)

    def shared(self) -> list[str]:
        """Accounts with more than one candidate."""
        return [a for a, held in self._ids.items() if isinstance(held, tuple)]


class TenantCache:
    """Built tenants (secrets decrypted), least recently used first out."""

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._tenants: OrderedDict[str, Tenant] = OrderedDict()

    def get(self, tenant_id: str) -> Tenant | None:
        tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            self._tenants.move_to_end(tenant_id)
        return tenant

    def put(self, tenant_id: str, tenant: Tenant) -> None:
        self._tenants[tenant_id] = tenant
        self._tenants.move_to_end(tenant_id)
        while len(self._tenants) > self._size:
            self._tenants.popitem(last=False)

    def drop(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id, None)

    def __len__(self) -> int:
        return len(self._tenants)
