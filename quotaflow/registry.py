"""The tenant registry: every component's read-only view of the tenants.

Components depend on the `TenantRegistry` protocol only. `FileTenantRegistry` reads a
JSON file of tenant documents; the registry on the compacted `tenants` topic implements
the same protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson
from prometheus_client.core import CounterMetricFamily
from pydantic import TypeAdapter

from tables.tenant import Tenant

_TENANT_LIST = TypeAdapter(list[Tenant])

ChangeListener = Callable[[str, Tenant | None], None]
"""Called after a tenant was put (with the tenant) or removed (with None)."""


@dataclass(frozen=True, slots=True)
class TenantSummary:
    """The fields components scan across every tenant at once (the pusher's region list,
    the worker's resume scan): the routing view (status, mode, regions, account) and
    `resumed_at`. Kept per tenant in a few dozen bytes so that such a scan never builds
    100,000 documents; everything else comes from `TenantRegistry.get`."""

    id: str
    status: str
    mode: str
    regions: tuple[str, ...]
    stripe_account: str | None
    resumed_at: float | None

    @classmethod
    def of(cls, tenant: Tenant) -> TenantSummary:
        return cls(
            tenant.id,
            tenant.status,
            tenant.mode,
            tenant.regions,
            tenant.stripe_account,
            tenant.resumed_at,
        )


class TenantRegistry(Protocol):
    """Looks tenants up by id or by Stripe Connect account."""

    def get(self, tenant_id: str) -> Tenant | None: ...

    def by_account(self, account: str) -> Tenant | None:
        """The one tenant with this Connect account; None if none, or several (a conflict)."""
        ...

    def account_holders(self, account: str) -> list[str]:
        """Ids of every tenant with this account: more than one is a conflict to alarm on."""
        ...

    def unreadable(self) -> Mapping[str, str]:
        """Tenant id -> the field that failed, for records this process could not read.

        Such a tenant is not unknown: its record exists and may become readable (a keyring
        completed, a record re-written), so work for it is held back, never refused.
        """
        ...

    def refused(self) -> Mapping[str, int]:
        """Reason -> tenant records refused as not authentic since start (see
        `quotaflow.tenants.topic_registry`); exported as
        `quotaflow_tenant_records_refused_total{reason}`."""
        ...

    def add_listener(self, listener: ChangeListener) -> None:
        """`listener` is called after every change of a tenant."""
        ...

    def summary(self, tenant_id: str) -> TenantSummary | None:
        """`get(tenant_id)`'s summary, without building the document."""
        ...

    def summaries(self) -> Iterator[TenantSummary]:
        """The summary of every tenant whose record is checked (see `checked`)."""
        ...

    def __iter__(self) -> Iterator[Tenant]:
        """Every tenant, each document built: for admin tools and tests; components scan
        `summaries()`."""
        ...

    @property
    def ready(self) -> bool: ...

    @property
    def checked(self) -> bool:
        """True once every record read so far has been checked (signature, version, that
        it opens): until then `summaries()` and `unreadable()` may miss tenants whose
        records are not checked yet, though `get` checks a record before returning it."""
        ...


class StaticTenantRegistry:
    """An in-memory registry built from tenant documents.

    A Connect account held by two tenants (the writer refuses it, but a record can come
    from elsewhere) is never resolved by write order: `by_account` answers None for it
    until one of them lets go, and `conflicts()` names it for the alarm.
    """

    def __init__(self, tenants: Iterable[Tenant] = ()) -> None:
        self._by_id: dict[str, Tenant] = {}
        self._by_account: dict[str, dict[str, Tenant]] = {}
        self._listeners: list[ChangeListener] = []
        for tenant in tenants:
            self.put(tenant)

    def put(self, tenant: Tenant) -> None:
        self._drop_account(self._by_id.get(tenant.id))
        self._by_id[tenant.id] = tenant
        if tenant.stripe_account is not None:
            self._by_account.setdefault(tenant.stripe_account, {})[tenant.id] = tenant
        self._emit(tenant.id, tenant)

    def remove(self, tenant_id: str) -> None:
        self._drop_account(self._by_id.pop(tenant_id, None))
        self._emit(tenant_id, None)

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def _emit(self, tenant_id: str, tenant: Tenant | None) -> None:
        for listener in self._listeners:
            listener(tenant_id, tenant)

    def unreadable(self) -> Mapping[str, str]:
        return {}

    def refused(self) -> Mapping[str, int]:
        return {}

    def _drop_account(self, old: Tenant | None) -> None:
        if old is None or old.stripe_account is None:
            return
        holders = self._by_account.get(old.stripe_account, {})
        holders.pop(old.id, None)
        if not holders:
            self._by_account.pop(old.stripe_account, None)

    def get(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def summary(self, tenant_id: str) -> TenantSummary | None:
        tenant = self._by_id.get(tenant_id)
        return None if tenant is None else TenantSummary.of(tenant)

    def summaries(self) -> Iterator[TenantSummary]:
        return iter([TenantSummary.of(t) for t in self._by_id.values()])

    @property
    def checked(self) -> bool:
        return True

    def by_account(self, account: str) -> Tenant | None:
        holders = self._by_account.get(account)
        if holders is None or len(holders) != 1:
            return None
        return next(iter(holders.values()))

    def account_holders(self, account: str) -> list[str]:
        return sorted(self._by_account.get(account, ()))

    def conflicts(self) -> dict[str, list[str]]:
        """Accounts held by more than one tenant, with their holders."""
        return {a: sorted(h) for a, h in self._by_account.items() if len(h) > 1}

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
        doc["notification_endpoints"] = [
            {**e.model_dump(mode="json"), "secret": e.secret.get_secret_value()}
            for e in tenant.notification_endpoints
        ]
        docs.append(doc)
    return orjson.dumps(docs, option=orjson.OPT_INDENT_2)


def refused_family(registries: Iterable[TenantRegistry]) -> CounterMetricFamily:
    """`quotaflow_tenant_records_refused_total{reason}`, summed over `registries`."""
    family = CounterMetricFamily(
        "quotaflow_tenant_records_refused",
        "Tenant records refused as not authentic, replayed or forged deletions, by reason",
        labels=["reason"],
    )
    totals: dict[str, int] = {}
    for registry in registries:
        for reason, count in registry.refused().items():
            totals[reason] = totals.get(reason, 0) + count
    for reason, count in sorted(totals.items()):
        family.add_metric([reason], count)
    return family
