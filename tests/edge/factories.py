"""One `QuotaUpdate` builder for the edge tests; each test file keeps its own defaults."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from edge.cache import QuotaCache
from edge.fastpath import EdgeRunner
from tables.quota import FeatureQuota, QuotaStatus, QuotaUpdate, Reason


def quota_update(
    version: int = 1,
    *,
    tenant: str = "t1",
    customer: str = "c1",
    limit: int | None = 10,
    used: int = 0,
    status: QuotaStatus = "active",
    rate: float | None = None,
    features: tuple[str, ...] = (),
    grace_until: float | None = None,
    period_end: int | None = None,
    updated_at: float = 0.0,
    metered: dict[str, FeatureQuota] | None = None,
) -> QuotaUpdate:
    """A record as the core publishes it: `remaining` = `limit - used` (None: unlimited)."""
    return QuotaUpdate(
        tenant_id=tenant,
        customer_id=customer,
        limit=limit,
        used=used,
        remaining=None if limit is None else max(limit - used, 0),
        status=status,
        version=version,
        reason=Reason(kind="policy", id=f"v{version}"),
        updated_at=updated_at,
        rate_per_second=rate,
        features=features,
        grace_until=grace_until,
        period_end=period_end,
        metered=metered or {},
    )


def feature_quota(limit: int | None, used: int = 0, rate: float | None = None) -> FeatureQuota:
    """A named metered feature as the core publishes it."""
    remaining = None if limit is None else max(limit - used, 0)
    return FeatureQuota(limit=limit, used=used, remaining=remaining, rate_per_second=rate)


def unlimited_cache(*keys: tuple[str, str], region: str = "eu") -> QuotaCache:
    """A cache of region `region` serving each (tenant, customer) unlimited."""
    cache = QuotaCache(regions=(region,))
    for tenant, customer in keys:
        cache.apply(quota_update(tenant=tenant, customer=customer, limit=None), region)
    return cache


class EdgeTestServer(TestServer):
    """aiohttp's TestServer serving as `quotaflow edge` does: the hot routes on the light
    HTTP/1.1 face (`edge/fastpath.py`), the rest by aiohttp, on one port."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return EdgeRunner(self.app, **kwargs)
