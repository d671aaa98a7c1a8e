"""Tenant lifecycle at the edge: suspended and removed tenants, in the cache and through
signed pushes (issue 20). The pushed path over real HTTP is in tests/streams."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from edge.cache import (
    EXHAUSTED,
    NO_SNAPSHOT,
    REMOVED,
    SUSPENDED,
    UNKNOWN,
    Decision,
    QuotaCache,
)
from edge.server import CACHE_KEY, build_app
from tables.quota import QuotaStatus, QuotaUpdate
from tests.edge.factories import EdgeTestServer, quota_update
from wire import SIGNATURE_HEADER, Kind, Signer, Verifier, generate_keypair

Client = TestClient[Any, Any]
PUSH_KEY, PUSH_PUBLIC = generate_keypair()
OTHER_KEY, _ = generate_keypair()


def quota(
    version: int,
    *,
    tenant: str = "t1",
    customer: str = "c1",
    limit: int | None = 10,
    status: QuotaStatus = "active",
) -> QuotaUpdate:
    return quota_update(version, tenant=tenant, customer=customer, limit=limit, status=status)


def filled() -> QuotaCache:
    cache = QuotaCache(regions=("eu",))
    cache.apply(quota(1, customer="c1"), "eu")
    cache.apply(quota(1, customer="c2", status="exhausted", limit=0), "eu")
    cache.apply(quota(1, tenant="t2"), "eu")
    return cache


def test_a_suspended_tenant_is_denied_for_every_customer_and_others_are_not() -> None:
    cache = filled()
    assert cache.set_tenant_state("t1", "suspended")
    assert not cache.set_tenant_state("t1", "suspended")  # idempotent: nothing changed
    assert cache.consume("t1", "c1") == SUSPENDED
    assert cache.check("t1", "c1") == SUSPENDED
    assert cache.consume("t1", "c2") == SUSPENDED
    assert cache.consume("t1", "never-seen") == SUSPENDED
    assert cache.consume("t2", "c1") == Decision(True, 9, "ok")
    assert cache.get("t1", "c1") is not None  # kept: served again on resume
    assert cache.tenant_state("t1") == "suspended"
    assert cache.tenant_counts() == {"suspended": 1, "removed": 0}


def test_an_update_applied_while_suspended_is_denied_too() -> None:
    cache = filled()
    cache.set_tenant_state("t1", "suspended")
    assert cache.apply(quota(2, customer="c1", limit=50), "eu")
    assert cache.apply(quota(1, customer="c3"), "eu")
    assert cache.consume("t1", "c1") == SUSPENDED
    assert cache.consume("t1", "c3") == SUSPENDED
    assert cache.version("t1", "c1") == 2  # the quota itself still follows the core


def test_resuming_restores_each_customers_own_answer() -> None:
    cache = filled()
    cache.set_tenant_state("t1", "suspended")
    cache.apply(quota(2, customer="c1", limit=50), "eu")
    assert cache.set_tenant_state("t1", "active")
    assert cache.consume("t1", "c1") == Decision(True, 49, "ok")
    assert cache.consume("t1", "c2") == EXHAUSTED  # its own status, not the tenant's
    assert cache.consume("t1", "never-seen") == UNKNOWN
    assert cache.tenant_state("t1") == "active"
    assert cache.tenant_counts() == {"suspended": 0, "removed": 0}


def test_a_removed_tenant_is_dropped_from_memory_and_its_undrained_usage_kept() -> None:
    cache = filled()
    assert cache.consume("t1", "c1", 3).allowed
    assert cache.set_tenant_state("t1", "removed")
    assert cache.get("t1", "c1") is None
    assert len(cache) == 1  # t2 only
    assert cache.consume("t1", "c1") == REMOVED
    assert cache.consume("t1", "anyone") == REMOVED
    # A delta queued before the removal must not bring the customer back.
    assert not cache.apply(quota(5, customer="c1"), "eu")
    assert cache.consume("t1", "c1") == REMOVED
    # The 3 units consumed before the removal still reach the reporter (once).
    assert cache.drain_usage() == {("t1", "c1"): 3}
    assert cache.drain_usage() == {}
    # Served here again: updates apply and the customers are served.
    assert cache.set_tenant_state("t1", "active")
    assert cache.apply(quota(6, customer="c1"), "eu")
    assert cache.consume("t1", "c1") == Decision(True, 9, "ok")


def test_a_complete_list_removes_held_tenants_it_lacks_in_its_region_only() -> None:
    cache = filled()
    cache.apply(quota(1, tenant="t3"), "us")  # another region's state: not this list's
    changed = cache.replace_tenant_states({"t1": "suspended"}, "eu")
    assert changed == 2  # t1 suspended, t2 removed
    assert cache.consume("t1", "c1") == SUSPENDED
    assert cache.consume("t2", "c1") == REMOVED
    assert cache.consume("t3", "c1").allowed
    assert cache.tenant_counts() == {"suspended": 1, "removed": 1}


def test_unknown_customers_of_a_suspended_tenant_say_so_before_the_snapshot() -> None:
    cache = QuotaCache(complete=False)
    assert cache.consume("t1", "c1") == NO_SNAPSHOT
    cache.replace_tenant_states({"t1": "suspended", "t2": "active"}, "eu")
    assert cache.consume("t1", "c1") == SUSPENDED
    assert cache.consume("t2", "c1") == NO_SNAPSHOT


# -- through the push handler ----------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    app = build_app(QuotaCache(regions=("eu",)), Verifier(Kind.PUSH, [PUSH_PUBLIC]), region="eu")
    async with TestClient(EdgeTestServer(app)) as c:  # push and metrics only: no app token
        yield c


def body(
    updates: list[QuotaUpdate],
    tenants: dict[str, str] | None = None,
    *,
    complete: bool = False,
    final: bool | None = None,
) -> bytes:
    doc: dict[str, Any] = {
        "region": "eu",
        "push_id": uuid.uuid4().hex,
        "snapshot": None if final is None else {"id": "s1", "final": final},
        "updates": [u.model_dump(mode="json") for u in updates],
    }
    if tenants is not None:
        doc["tenants"] = tenants
    if complete:
        doc["tenants_complete"] = True
    return orjson.dumps(doc)


async def push(client: Client, raw: bytes, key: str = PUSH_KEY) -> tuple[int, Any]:
    headers = {SIGNATURE_HEADER: Signer(Kind.PUSH, [key]).header(raw)}
    resp = await client.post("/v1/push", data=raw, headers=headers)
    return resp.status, await resp.json()


async def test_a_signed_push_suspends_resumes_and_removes(client: Client) -> None:
    cache = client.app[CACHE_KEY]
    assert (await push(client, body([quota(1), quota(1, customer="c2")], final=True)))[0] == 200
    assert (await push(client, body([], {"t1": "suspended"})))[0] == 200
    assert cache.consume("t1", "c1") == SUSPENDED
    assert (await push(client, body([], {"t1": "active"})))[0] == 200
    assert cache.consume("t1", "c1").allowed
    # The removal applies before the same push's updates: a queued update stays out.
    assert (await push(client, body([quota(2)], {"t1": "removed"})))[0] == 200
    assert cache.consume("t1", "c1") == REMOVED
    assert len(cache) == 0
    metrics = await (await client.get("/metrics")).text()
    assert "edge_tenant_state_changes_total 3.0" in metrics
    assert 'edge_tenants_denied{state="removed"} 1.0' in metrics


async def test_tenant_states_from_an_unsigned_or_forged_push_change_nothing(
    client: Client,
) -> None:
    cache = client.app[CACHE_KEY]
    await push(client, body([quota(1)], final=True))
    evil = body([], {"t1": "removed"}, complete=True)
    forged = await push(client, evil, key=OTHER_KEY)
    assert forged == (401, {"error": {"reason": "unknown_key"}})
    unsigned = await client.post("/v1/push", data=evil)
    assert unsigned.status == 401
    assert cache.consume("t1", "c1").allowed
    assert cache.tenant_state("t1") == "active"


async def test_a_bad_tenant_state_is_a_bad_body(client: Client) -> None:
    status, answer = await push(client, body([], {"t1": "paused"}))
    assert (status, answer) == (400, {"error": {"reason": "bad_body"}})
    status, answer = await push(client, body([], {"Not A Tenant!": "suspended"}))
    assert (status, answer) == (400, {"error": {"reason": "bad_body"}})


async def test_a_snapshot_list_tells_a_fresh_node_who_is_suspended(client: Client) -> None:
    cache = client.app[CACHE_KEY]
    states = {"t1": "suspended", "t2": "active"}
    first = body([quota(1, tenant="t2")], states, complete=True, final=False)
    assert (await push(client, first))[0] == 200
    assert (await push(client, body([quota(1)], final=True)))[0] == 200
    assert cache.consume("t1", "c1") == SUSPENDED
    assert cache.consume("t2", "c1").allowed
