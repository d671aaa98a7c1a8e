"""`POST /v1/consume` with features and rate limits, over real HTTP (aiohttp's TestServer).

Uses test_server's fixtures, so whatever they gain (credentials) applies here too."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.edge.test_server import Client, client, push_body, signed, update

__all__ = ["client", "signed"]  # fixtures, used by name


def limited(version: int, *, customer: str = "c1", rate: float = 0.1) -> dict[str, Any]:
    """A record of `limit` 10 with a rate limit (burst 1) and the boolean feature `bulk`."""
    return update(version, customer=customer) | {"rate_per_second": rate, "features": ["bulk"]}


async def consume(client: Client, **fields: object) -> dict[str, Any]:
    resp = await client.post("/v1/consume", json={"tenant_id": "t1", "customer_id": "c1", **fields})
    assert resp.status == 200
    answer: dict[str, Any] = await resp.json()
    return answer


async def test_a_rate_limited_answer_carries_retry_after_and_others_do_not(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    body = push_body([limited(1)], final=True)
    assert (await client.post("/v1/push", data=body, headers=signed(body))).status == 200
    assert await consume(client, cost=3) == {"allowed": True, "remaining": 7, "reason": "ok"}
    denied = await consume(client, cost=3)
    assert {k: denied[k] for k in ("allowed", "remaining", "reason")} == {
        "allowed": False,
        "remaining": 7,
        "reason": "rate_limited",
    }
    # Burst 1, 0.1 tokens a second: the token is back within 10 s, not at once.
    assert 9.0 < denied["retry_after"] <= 10.0
    assert (await consume(client, cost=0))["reason"] == "rate_limited"  # a probe, still limited


async def test_a_call_naming_a_feature_the_customer_lacks_is_no_entitlement(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    body = push_body([limited(1, rate=1000)], final=True)
    await client.post("/v1/push", data=body, headers=signed(body))
    assert await consume(client, feature="sso") == {
        "allowed": False,
        "remaining": None,
        "reason": "no_entitlement",
    }
    allowed = await consume(client, feature="bulk")
    assert allowed == {"allowed": True, "remaining": 9, "reason": "ok"}
    assert (await consume(client))["allowed"]  # no feature named: not gated
    metrics = await (await client.get("/metrics")).text()
    assert 'edge_consume_decisions_total{app="rating",reason="no_entitlement"} 1.0' in metrics
    assert 'edge_consume_decisions_total{app="rating",reason="ok"} 2.0' in metrics


async def test_rate_limited_answers_are_counted_by_reason(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    body = push_body([limited(1)], final=True)
    await client.post("/v1/push", data=body, headers=signed(body))
    reasons = [(await consume(client))["reason"] for _ in range(3)]
    assert reasons == ["ok", "rate_limited", "rate_limited"]
    metrics = await (await client.get("/metrics")).text()
    assert 'edge_consume_decisions_total{app="rating",reason="rate_limited"} 2.0' in metrics


@pytest.mark.parametrize("feature", ["", 7, ["bulk"], "x" * 257])
async def test_a_malformed_feature_is_400(client: Client, feature: object) -> None:
    resp = await client.post(
        "/v1/consume", json={"tenant_id": "t1", "customer_id": "c1", "feature": feature}
    )
    assert resp.status == 400
    assert await resp.json() == {"error": {"reason": "bad_feature"}}


async def test_check_answers_features_and_rate_limits_and_spends_nothing(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    body = push_body([limited(1)], final=True)
    await client.post("/v1/push", data=body, headers=signed(body))
    ask = {"tenant_id": "t1", "customer_id": "c1"}
    for _ in range(3):  # the one token stays
        resp = await client.post("/v1/check", json={**ask, "feature": "bulk"})
        assert await resp.json() == {"allowed": True, "remaining": 9, "reason": "ok"}
    resp = await client.post("/v1/check", json={**ask, "feature": "sso"})
    assert (await resp.json())["reason"] == "no_entitlement"
    assert (await consume(client))["allowed"]
    limited_answer = await (await client.post("/v1/check", json=ask)).json()
    assert limited_answer["reason"] == "rate_limited"
    assert 9.0 < limited_answer["retry_after"] <= 10.0


async def test_a_rate_limited_answer_is_not_replayed_under_its_idempotency_key(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    body = push_body([limited(1)], final=True)
    await client.post("/v1/push", data=body, headers=signed(body))
    assert (await consume(client))["allowed"]  # the one token
    ask = {"tenant_id": "t1", "customer_id": "c1", "cost": 2}
    key = {"Idempotency-Key": "call-7"}
    first = await (await client.post("/v1/consume", json=ask, headers=key)).json()
    assert first["reason"] == "rate_limited"
    # The token comes back: the same call under the same key is decided afresh, then kept.
    body = push_body([limited(2, rate=1000)])
    await client.post("/v1/push", data=body, headers=signed(body))
    await asyncio.sleep(0.02)  # the record keeps the empty bucket; at 1000/s it refills fast
    for _ in range(2):
        resp = await client.post("/v1/consume", json=ask, headers=key)
        assert await resp.json() == {"allowed": True, "remaining": 7, "reason": "ok"}
    assert (await (await client.get("/v1/quotas/t1/c1")).json())["used"] == 3
