"""The tenant registry: every component's read-only view of the tenants.

Components depend on the `TenantRegistry` protocol only. `FileTenantRegistry` reads a
JSON file of tenant documents; the registry on the compacted `tenants` topic implements
the same protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import orjson
from pydantic import TypeAdapter

from tables.tenant import Tenant

_TENANT_LIST = TypeAdapter(list[Tenant])


class TenantRegistry(Protocol):
    """Looks tenants up by id or by Stripe Connect account."""

    def get(self, tenant_id: str) -> Tenant | None: ...

    def by_account(self, account: str) -> Tenant | None: ...

    def __iter__(self) -> Iterator[Tenant]: ...

    @property
    def ready(self) -> bool: ...


class StaticTenantRegistry:
    """An in-memory registry built from tenant documents."""

    def __init__(self, tenants: Iterable[Tenant] = ()) -> None:
        self._by_id: dict[str, Tenant] = {}
        self._by_account: dict[str, Tenant] = {}
        for tenant in tenants:
            self.put(tenant)

    def put(self, tenant: Tenant) -> None:
        old = self._by_id.get(tenant.id)
        if old is not None and old.stripe_account is not None:
            self._by_account.pop(old.stripe_account, None)
        self._by_id[tenant.id] = tenant
        if tenant.stripe_account is not None:
            self._by_account[tenant.stripe_account] = tenant

    def remove(self, tenant_id: str) -> None:
        old = self._by_id.pop(tenant_id, None)
        if old is not None and old.stripe_account is not None:
            self._by_account.pop(old.stripe_account, None)

    def get(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def by_account(self, account: str) -> Tenant | None:
        return self._by_account.get(account)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def ready(self) -> bool:
        return True


def load_tenants_file(path: Path) -> StaticTenantRegistry:
    """Reads a JSON list of tenant documents; raises `pydantic.ValidationError` naming the field."""
    return StaticTenantRegistry(_TENANT_LIST.validate_python(orjson.loads(path.read_bytes())))


def dump_tenants(tenants: Iterable[Tenant]) -> bytes:
    """The JSON document `load_tenants_file` reads, secrets included: for local dev files only."""
    docs = []
    for tenant in tenants:
        doc = tenant.model_dump(mode="json")
        doc["webhook_secrets"] = [
            {**s.model_dump(mode="json"), "secret": s.secret.get_secret_value()}
            for s in tenant.webhook_secrets
        ]
        if tenant.stripe_api_key is not None:
            doc["stripe_api_key"] = tenant.stripe_api_key.get_secret_value()
        docs.append(doc)
    return orjson.dumps(docs, option=orjson.OPT_INDENT_2)
