"""`/v1/authorize`, the forward-auth route, over real HTTP (aiohttp's TestServer)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from edge.auth import AppAuth, generate_app_token, token_digest
from edge.cache import QuotaCache
from edge.identify import Identifier, api_key_digest
from edge.server import build_app
from tables.quota import QuotaStatus, QuotaUpdate
from tests.edge.factories import EdgeTestServer, quota_update
from wire import Kind, Verifier, generate_keypair

Client = TestClient[Any, Any]
GATEWAY = generate_app_token()
BEARER = {"Authorization": f"Bearer {GATEWAY}"}
API_KEY = "ck_" + "z" * 40
ROUTES = [{"prefix": "/v1/export", "method": "POST", "feature": "export", "cost": 5}]
PERIOD_END = int(time.time()) + 3600


def record(
    customer: str,
    *,
    limit: int | None = 10,
    status: QuotaStatus = "active",
    features: tuple[str, ...] = ("export",),
    rate: float | None = None,
) -> QuotaUpdate:
    return quota_update(
        customer=customer,
        limit=limit,
        status=status,
        features=features,
        rate=rate,
        period_end=PERIOD_END,
        updated_at=time.time(),
    )


def who(customer: str) -> dict[str, str]:
    return {"X-Quotaflow-Tenant": "t1", "X-Quotaflow-Customer": customer}


@pytest.fixture
def cache() -> QuotaCache:
    cache = QuotaCache(regions=("eu",))
    for update in (
        record("c1"),
        record("big", limit=None),
        record("gone", status="blocked"),
        record("basic", features=()),
        record("fast", rate=0.5),
    ):
        cache.apply(update, "eu")
    return cache


async def _client(cache: QuotaCache, identifier: Identifier) -> Client:
    app = build_app(
        cache,
        Verifier(Kind.PUSH, [generate_keypair()[1]]),
        region="eu",
        auth=AppAuth({"gateway": token_digest(GATEWAY)}),
        identifier=identifier,
        retry_after=2.0,
    )
    cache.mark_complete()  # build_app waits for a snapshot; these records stand for one
    return TestClient(EdgeTestServer(app))


@pytest.fixture
async def client(cache: QuotaCache) -> AsyncIterator[Client]:
    async with await _client(cache, Identifier(routes=ROUTES)) as c:
        yield c


async def test_allowed_requests_are_counted_and_say_what_is_left(
    client: Client, cache: QuotaCache
) -> None:
    resp = await client.get(
        "/v1/authorize",
        headers={**BEARER, **who("c1"), "X-Original-URI": "/v1/search?q=1"},
    )
    assert resp.status == 200
    assert resp.headers["X-Quota-Remaining"] == resp.headers["RateLimit-Remaining"] == "9"
    # Caddy/Traefik style: X-Forwarded-* wins; the POST export route costs 5.
    resp = await client.get(
        "/v1/authorize",
        headers={
            **BEARER,
            **who("c1"),
            "X-Forwarded-Method": "POST",
            "X-Forwarded-Uri": "/v1/export",
            "X-Original-URI": "/v1/cheap",
        },
    )
    assert (resp.status, resp.headers["X-Quota-Remaining"]) == (200, "4")
    # Envoy style: the original method, and the path after the prefix.
    resp = await client.post("/v1/authorize/v1/export/x", headers={**BEARER, **who("c1")})
    assert resp.status == 429
    doc = orjson.loads(await resp.read())
    assert doc == {"error": {"reason": "insufficient", "retry_after": doc["error"]["retry_after"]}}
    # Until the period ends (PERIOD_END is fixed at import: the suite may start long before).
    assert abs(int(resp.headers["Retry-After"]) - (PERIOD_END - time.time())) <= 10
    assert resp.headers["X-Quota-Reason"] == "insufficient"
    assert resp.headers["RateLimit-Limit"] == "10"
    doc_c1 = cache.get("t1", "c1")
    assert doc_c1 is not None
    assert doc_c1["used"] == 6  # 1 + 5, the refused call counted nothing
    unlimited = await client.get("/v1/authorize", headers={**BEARER, **who("big")})
    assert unlimited.status == 200
    assert "X-Quota-Remaining" not in unlimited.headers


@pytest.mark.parametrize(
    ("customer", "status", "reason"),
    [("gone", 403, "blocked"), ("nobody", 403, "unknown_customer")],
)
async def test_denials_have_a_status_and_a_json_reason(
    client: Client, customer: str, status: int, reason: str
) -> None:
    resp = await client.get("/v1/authorize", headers={**BEARER, **who(customer)})
    assert resp.status == status
    assert orjson.loads(await resp.read()) == {"error": {"reason": reason}}
    assert resp.headers["Content-Type"].startswith("application/json")


async def test_exhausted_is_429_and_no_snapshot_is_503_with_retry_after(cache: QuotaCache) -> None:
    cache.consume("t1", "c1", 10)
    async with await _client(cache, Identifier()) as client:
        cache.expect_snapshot()  # as after a restart: unknown customers wait for a snapshot
        resp = await client.get("/v1/authorize", headers={**BEARER, **who("c1")})
        assert (resp.status, resp.headers["X-Quota-Reason"]) == (429, "exhausted")
        assert resp.headers["X-Quota-Remaining"] == "0"
        resp = await client.get("/v1/authorize", headers={**BEARER, **who("new")})
        assert (resp.status, resp.headers["Retry-After"]) == (503, "2")
        assert orjson.loads(await resp.read()) == {
            "error": {"reason": "no_snapshot", "retry_after": 2}
        }


async def test_the_gateway_needs_its_edge_token_and_the_caller_an_identity(
    client: Client, cache: QuotaCache
) -> None:
    resp = await client.get("/v1/authorize", headers=who("c1"))
    assert resp.status == 401
    assert orjson.loads(await resp.read()) == {"error": {"reason": "missing_credential"}}
    resp = await client.get("/v1/authorize", headers=BEARER)
    assert resp.status == 401
    assert orjson.loads(await resp.read()) == {"error": {"reason": "missing_identity"}}
    doc = cache.get("t1", "c1")
    assert doc is not None
    assert doc["used"] == 0
    metrics = await (await client.get("/metrics")).text()
    assert 'edge_authorize_decisions_total{app="gateway",reason="missing_identity"} 1.0' in metrics


async def test_api_key_mode_identifies_by_digest(cache: QuotaCache) -> None:
    ident = Identifier(mode="api_key", api_keys={api_key_digest(API_KEY): "t1/c1"})
    async with await _client(cache, ident) as client:
        ok = await client.get("/v1/authorize", headers={**BEARER, "X-Api-Key": API_KEY})
        assert (ok.status, ok.headers["X-Quota-Remaining"]) == (200, "9")
        bad = await client.get("/v1/authorize", headers={**BEARER, "X-Api-Key": "ck_nope"})
        assert bad.status == 401
        assert orjson.loads(await bad.read()) == {"error": {"reason": "unknown_api_key"}}


async def test_an_idempotency_key_makes_a_retry_count_once(
    client: Client, cache: QuotaCache
) -> None:
    headers = {**BEARER, **who("c1"), "Idempotency-Key": "req-1"}
    first = await client.get("/v1/authorize", headers=headers)
    again = await client.get("/v1/authorize", headers=headers)
    assert first.status == again.status == 200
    assert again.headers["X-Quota-Remaining"] == first.headers["X-Quota-Remaining"] == "9"
    assert again.headers["Idempotent-Replayed"] == "true"
    reused = await client.get(
        "/v1/authorize",
        headers={**headers, "X-Forwarded-Uri": "/v1/export", "X-Forwarded-Method": "POST"},
    )
    assert reused.status == 422
    doc = cache.get("t1", "c1")
    assert doc is not None
    assert doc["used"] == 1


async def test_a_route_feature_is_an_entitlement_and_rate_limits_say_when_to_retry(
    client: Client, cache: QuotaCache
) -> None:
    export = {"X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/v1/export"}
    resp = await client.get("/v1/authorize", headers={**BEARER, **who("basic"), **export})
    assert resp.status == 403
    assert orjson.loads(await resp.read()) == {"error": {"reason": "no_entitlement"}}
    first = await client.get("/v1/authorize", headers={**BEARER, **who("fast")})
    assert first.status == 200
    limited = await client.get("/v1/authorize", headers={**BEARER, **who("fast")})
    assert (limited.status, limited.headers["X-Quota-Reason"]) == (429, "rate_limited")
    assert limited.headers["Retry-After"] == "2"  # a token every 2 s, rounded up
    assert orjson.loads(await limited.read()) == {
        "error": {"reason": "rate_limited", "retry_after": 2}
    }
    for customer, used in (("basic", 0), ("fast", 1)):
        doc = cache.get("t1", customer)
        assert doc is not None
        assert doc["used"] == used
