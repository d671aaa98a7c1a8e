"""The ASGI middleware in front of a real Starlette app (through httpx's ASGI transport):
allowed calls reach the endpoint, denied ones do not, and the counts agree."""

from __future__ import annotations

import time

import httpx
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edge.asgi import QuotaMiddleware
from edge.cache import QuotaCache
from edge.identify import Identifier, api_key_digest
from tables.quota import FeatureQuota, QuotaUpdate, Reason

ROUTES = [{"prefix": "/export", "method": "POST", "feature": "export", "cost": 4}]


def cache_with(limit: int) -> QuotaCache:
    cache = QuotaCache()
    cache.apply(
        QuotaUpdate(
            tenant_id="t1",
            customer_id="c1",
            limit=limit,
            used=0,
            remaining=limit,
            status="active",
            version=1,
            reason=Reason(kind="policy", id="v1"),
            updated_at=time.time(),
            features=("export",),
        )
    )
    return cache


def starlette_app(cache: QuotaCache, identifier: Identifier) -> tuple[Starlette, list[str]]:
    reached: list[str] = []

    async def endpoint(request: Request) -> JSONResponse:
        reached.append(request.url.path)
        return JSONResponse({"ok": True}, headers={"X-App": "yes"})

    app = Starlette(
        routes=[
            Route("/search", endpoint),
            Route("/export", endpoint, methods=["POST"]),
            Route("/healthz", endpoint),
        ],
        middleware=[
            Middleware(QuotaMiddleware, cache=cache, identifier=identifier, exempt=["/healthz"])
        ],
    )
    return app, reached


WHO = {"X-Quotaflow-Tenant": "t1", "X-Quotaflow-Customer": "c1"}


async def test_allowed_calls_reach_the_endpoint_and_denied_ones_do_not() -> None:
    cache = cache_with(10)
    app, reached = starlette_app(cache, Identifier(routes=ROUTES))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        answers = [await client.get("/search", headers=WHO) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert answers[-1].headers["X-Quota-Remaining"] == "7"
        assert answers[-1].headers["X-App"] == "yes"
        export = await client.post("/export", headers=WHO)
        assert (export.status_code, export.headers["X-Quota-Remaining"]) == (200, "3")
        denied = await client.post("/export", headers=WHO)  # costs 4, 3 left
        assert denied.status_code == 429
        assert denied.json() == {"error": {"reason": "insufficient"}}
        for _ in range(5):
            await client.get("/search", headers=WHO)
        last = await client.get("/search", headers=WHO)
        assert (last.status_code, last.json()) == (429, {"error": {"reason": "exhausted"}})
        anonymous = await client.get("/search")
        assert (anonymous.status_code, anonymous.json()["error"]["reason"]) == (
            401,
            "missing_identity",
        )
        stranger = await client.get(
            "/search", headers={"X-Quotaflow-Tenant": "t1", "X-Quotaflow-Customer": "c9"}
        )
        assert (stranger.status_code, stranger.json()["error"]["reason"]) == (
            403,
            "unknown_customer",
        )
        health = await client.get("/healthz")  # exempt: no identity needed, nothing counted
        assert health.status_code == 200
    # 3 searches + 1 export + 3 searches allowed before exhaustion; the endpoint saw them all
    # and nothing else but the health check.
    doc = cache.get("t1", "c1")
    assert doc is not None
    assert doc["used"] == 10
    assert reached.count("/search") == 6
    assert reached.count("/export") == 1
    assert reached.count("/healthz") == 1
    # What the endpoint served, priced by the routes, is exactly what was counted.
    assert reached.count("/search") * 1 + reached.count("/export") * 4 == doc["used"]


async def test_api_keys_identify_callers_in_the_middleware_too() -> None:
    cache = cache_with(2)
    key = "ck_" + "q" * 40
    ident = Identifier(mode="api_key", api_keys={api_key_digest(key): "t1/c1"})
    app, reached = starlette_app(cache, ident)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/search", headers={"X-Api-Key": key})).status_code == 200
        wrong = await client.get("/search", headers={"X-Api-Key": "ck_wrong"})
        assert (wrong.status_code, orjson.loads(wrong.content)) == (
            401,
            {"error": {"reason": "unknown_api_key"}},
        )
    assert reached == ["/search"]


def test_the_middleware_and_its_rules_are_part_of_the_edge_api() -> None:
    import edge

    assert {"QuotaMiddleware", "Identifier", "IdentifyError"} <= set(edge.__all__)
    assert edge.QuotaMiddleware is QuotaMiddleware
    assert all(hasattr(edge, name) for name in edge.__all__)


async def test_a_route_naming_a_metered_feature_spends_its_own_quota_and_bucket() -> None:
    cache = QuotaCache()
    cache.apply(
        QuotaUpdate(
            tenant_id="t1",
            customer_id="c1",
            limit=100,
            used=0,
            remaining=100,
            status="active",
            version=1,
            reason=Reason(kind="policy", id="v1"),
            updated_at=time.time(),
            metered={"export": FeatureQuota(limit=8, used=0, remaining=8, rate_per_second=1.0)},
        )
    )
    app, reached = starlette_app(cache, Identifier(routes=ROUTES))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        export = await client.post("/export", headers=WHO)
        assert (export.status_code, export.headers["X-Quota-Remaining"]) == (200, "4")
        limited = await client.post("/export", headers=WHO)  # 1 call/s: the bucket is empty
        assert (limited.status_code, limited.json()["error"]["reason"]) == (429, "rate_limited")
        assert int(limited.headers["Retry-After"]) == 1
        search = await client.get("/search", headers=WHO)  # the default quota and bucket
        assert (search.status_code, search.headers["X-Quota-Remaining"]) == (200, "99")
    assert reached == ["/export", "/search"]
    assert cache.drain_usage() == {("t1", "c1"): 1, ("t1", "c1", "export"): 4}
