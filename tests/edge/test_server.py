"""The sidecar over real HTTP (aiohttp's TestServer on a local port)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from edge.auth import AppAuth, generate_app_token, token_digest
from edge.cache import QuotaCache
from edge.server import build_app
from tables.quota import QuotaUpdate, Reason
from tests.edge.factories import EdgeTestServer
from wire import SIGNATURE_HEADER, Kind, Signer, Verifier, generate_keypair

Client = TestClient[Any, Any]

# (private, public) pairs: "k2" and "k1" are the region's push keys (newest first), "edge"
# is an edge node's own credential, "wrong" nobody's.
KEYS = {name: generate_keypair() for name in ("k1", "k2", "wrong", "edge")}


# The calling application's token: the client sends it with every request.
TOKEN = generate_app_token()
AUTH = AppAuth({"rating": token_digest(TOKEN)})
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def push_verifier(*names: str) -> Verifier:
    return Verifier(Kind.PUSH, [KEYS[n][1] for n in names])


def update(version: int, *, limit: int = 10, customer: str = "c1") -> dict[str, Any]:
    return QuotaUpdate(
        tenant_id="t1",
        customer_id=customer,
        limit=limit,
        used=0,
        remaining=limit,
        status="active",
        version=version,
        reason=Reason(kind="policy", id=f"v{version}"),
        updated_at=time.time(),
        period_end=1_800_000_000,
    ).model_dump(mode="json")


def push_body(
    updates: list[dict[str, Any]], *, final: bool | None = None, region: str = "eu"
) -> bytes:
    snapshot = None if final is None else {"id": "s1", "final": final}
    doc = {"region": region, "updates": updates, "snapshot": snapshot, "push_id": uuid.uuid4().hex}
    return orjson.dumps(doc)


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    app = build_app(QuotaCache(regions=("eu",)), push_verifier("k2", "k1"), region="eu", auth=AUTH)
    async with TestClient(EdgeTestServer(app), headers=BEARER) as c:
        yield c


@pytest.fixture
def signed() -> Callable[..., dict[str, str]]:
    def make(
        body: bytes, key: str = "k2", at: float | None = None, kind: Kind = Kind.PUSH
    ) -> dict[str, str]:
        signer = Signer(kind, [KEYS[key][0]], clock=(lambda: at) if at is not None else time.time)
        return {SIGNATURE_HEADER: signer.header(body)}

    return make


async def test_push_then_get_shows_the_quota(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    body = push_body([update(1), update(2, limit=20), update(1, customer="c2")], final=True)
    resp = await client.post("/v1/push", data=body, headers=signed(body))
    assert resp.status == 200
    answer = await resp.json()
    assert {k: answer[k] for k in ("applied", "stale", "invalid")} == {
        "applied": 3,
        "stale": 0,
        "invalid": 0,
    }
    resp = await client.get("/v1/quotas/t1/c1")
    doc = await resp.json()
    assert (doc["limit"], doc["used"], doc["remaining"], doc["version"]) == (20, 0, 20, 2)
    assert (doc["status"], doc["period_end"]) == ("active", 1_800_000_000)


async def test_an_older_version_is_counted_stale(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    for version, expected in ((3, 1), (2, 0)):
        body = push_body([update(version)])
        resp = await client.post("/v1/push", data=body, headers=signed(body))
        assert (await resp.json())["applied"] == expected
    assert (await (await client.get("/v1/quotas/t1/c1")).json())["version"] == 3


async def test_unknown_customer_is_404(client: Client) -> None:
    resp = await client.get("/v1/quotas/t1/nobody")
    assert resp.status == 404
    assert await resp.json() == {"error": {"reason": "unknown_customer"}}


async def test_consume_counts_and_get_reflects_it(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    body = push_body([update(1, limit=3)], final=True)
    await client.post("/v1/push", data=body, headers=signed(body))
    answers = []
    for _ in range(4):
        resp = await client.post(
            "/v1/consume", json={"tenant_id": "t1", "customer_id": "c1", "cost": 1}
        )
        answers.append(await resp.json())
    assert [a["allowed"] for a in answers] == [True, True, True, False]
    assert answers[-1]["reason"] == "exhausted"
    doc = await (await client.get("/v1/quotas/t1/c1")).json()
    assert (doc["used"], doc["remaining"], doc["status"]) == (3, 0, "exhausted")
    unknown = await client.post("/v1/consume", json={"tenant_id": "t1", "customer_id": "x"})
    assert await unknown.json() == {
        "allowed": False,
        "remaining": None,
        "reason": "unknown_customer",
    }


@pytest.mark.parametrize(
    "payload",
    [
        b"nope",
        b"[]",
        b'{"tenant_id": "t1"}',
        b'{"tenant_id":"t1","customer_id":"c1","cost":-1}',
        b'{"tenant_id":"t1","customer_id":"c1","cost":1.5}',
    ],
)
async def test_consume_refuses_malformed_requests(client: Client, payload: bytes) -> None:
    resp = await client.post("/v1/consume", data=payload)
    assert resp.status == 400


async def test_bad_signatures_are_401_and_change_nothing(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    good = push_body([update(1)])
    await client.post("/v1/push", data=good, headers=signed(good))
    evil = push_body([update(9, limit=1_000_000)], final=True)
    attempts = {
        "missing_signature": {},
        "unknown_key": signed(evil, key="wrong"),
        "stale": signed(evil, at=time.time() - 3600),
        "future": signed(evil, at=time.time() + 3600),
        "bad_signature": signed(good),
    }
    for reason, headers in attempts.items():
        resp = await client.post("/v1/push", data=evil, headers=headers)
        assert resp.status == 401, reason
        assert await resp.json() == {"error": {"reason": reason}}
    again = push_body([update(1)])
    replay_headers = signed(again)
    assert (await client.post("/v1/push", data=again, headers=replay_headers)).status == 200
    replayed = await client.post("/v1/push", data=again, headers=replay_headers)
    assert (replayed.status, await replayed.json()) == (401, {"error": {"reason": "replayed"}})
    doc = await (await client.get("/v1/quotas/t1/c1")).json()
    assert (doc["version"], doc["limit"]) == (1, 10)
    assert (await client.get("/readyz")).status == 503
    metrics = await (await client.get("/metrics")).text()
    assert 'edge_push_rejections_total{reason="replayed"} 1.0' in metrics


async def test_a_push_signed_with_an_edge_credential_or_as_another_kind_is_refused(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    evil = push_body([update(9, limit=1_000_000)], final=True)
    attempts = {
        "unknown_key": signed(evil, key="edge"),
        "bad_signature": signed(evil, kind=Kind.ANNOUNCEMENT),
    }
    for reason, headers in attempts.items():
        resp = await client.post("/v1/push", data=evil, headers=headers)
        assert (resp.status, await resp.json()) == (401, {"error": {"reason": reason}})
    usage_signed = signed(evil, kind=Kind.USAGE)
    resp = await client.post("/v1/push", data=evil, headers=usage_signed)
    assert resp.status == 401
    assert (await client.get("/v1/quotas/t1/c1")).status == 404


async def test_the_previous_key_still_verifies_during_rotation(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    body = push_body([update(1)])
    assert (await client.post("/v1/push", data=body, headers=signed(body, key="k1"))).status == 200


async def test_bad_bodies_are_400_and_bad_updates_are_isolated(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    for body in (b"not json", b'{"updates": []}', push_body([], region="us")):
        assert (await client.post("/v1/push", data=body, headers=signed(body))).status == 400
    body = push_body([{"tenant_id": "t1"}, update(1)])
    resp = await client.post("/v1/push", data=body, headers=signed(body))
    answer = await resp.json()
    assert (answer["applied"], answer["stale"], answer["invalid"]) == (1, 0, 1)


async def test_ready_once_a_final_snapshot_batch_arrived(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 503
    first = push_body([update(1)], final=False)
    await client.post("/v1/push", data=first, headers=signed(first))
    assert (await client.get("/readyz")).status == 503
    last = push_body([update(1, customer="c2")], final=True)
    await client.post("/v1/push", data=last, headers=signed(last))
    assert (await client.get("/readyz")).status == 200


async def test_every_push_answer_names_the_process_and_whether_it_holds_a_snapshot(
    signed: Callable[..., dict[str, str]],
) -> None:
    answers: list[dict[str, Any]] = []
    for _ in range(2):  # two processes of one node: same cache type, fresh state each
        app = build_app(QuotaCache(regions=("eu",)), push_verifier("k2"), region="eu")
        async with TestClient(EdgeTestServer(app)) as c:
            for final in (None, False, True, None):
                body = push_body([update(1)], final=final)
                answers.append(
                    await (await c.post("/v1/push", data=body, headers=signed(body))).json()
                )
            health = await (await c.get("/healthz")).json()
            assert health["boot_id"] == answers[-1]["boot_id"]
    assert [a["snapshot"] for a in answers] == [False, False, True, True] * 2
    first, second = {a["boot_id"] for a in answers[:4]}, {a["boot_id"] for a in answers[4:]}
    assert len(first) == len(second) == 1
    assert first != second


async def test_an_unknown_customer_is_denied_no_snapshot_until_the_snapshot_is_complete(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    ask = {"tenant_id": "t1", "customer_id": "c9"}
    before = await (await client.post("/v1/consume", json=ask)).json()
    assert before == {"allowed": False, "remaining": None, "reason": "no_snapshot"}
    assert "edge_snapshot_complete 0.0" in await (await client.get("/metrics")).text()
    body = push_body([update(1)], final=True)
    await client.post("/v1/push", data=body, headers=signed(body))
    after = await (await client.post("/v1/consume", json=ask)).json()
    assert after["reason"] == "unknown_customer"
    metrics = await (await client.get("/metrics")).text()
    assert "edge_snapshot_complete 1.0" in metrics
    assert 'edge_consume_decisions_total{app="rating",reason="no_snapshot"} 1.0' in metrics


async def test_metrics_expose_state_age_per_region(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    body = push_body([])
    await client.post("/v1/push", data=body, headers=signed(body))
    metrics = await (await client.get("/metrics")).text()
    assert 'quota_state_age_seconds{region="eu"}' in metrics
    assert 'edge_pushes_total{outcome="accepted"} 1.0' in metrics


async def test_compressed_push_is_refused_before_it_is_read() -> None:
    import gzip

    from aiohttp.test_utils import TestClient

    from edge.cache import QuotaCache
    from edge.server import build_app

    verifier = push_verifier("k1")
    client = TestClient(EdgeTestServer(build_app(QuotaCache(), verifier, region="eu")))
    await client.start_server()
    try:
        bomb = gzip.compress(b"\0" * 1_000_000)
        async with client.post("/v1/push", data=bomb, headers={"Content-Encoding": "gzip"}) as resp:
            assert resp.status == 415
            assert (await resp.json())["error"]["reason"] == "unsupported_encoding"
    finally:
        await client.close()


async def test_by_default_nobody_may_consume_check_or_read_quotas() -> None:
    app = build_app(QuotaCache(regions=("eu",)), push_verifier("k2"), region="eu")
    async with TestClient(EdgeTestServer(app), headers=BEARER) as c:
        ask = {"tenant_id": "t1", "customer_id": "c1"}
        for resp in (
            await c.post("/v1/consume", json=ask),
            await c.post("/v1/check", json=ask),
            await c.get("/v1/quotas/t1/c1"),
        ):
            assert (resp.status, await resp.json()) == (
                401,
                {"error": {"reason": "bad_credential"}},
            )
        assert (await c.get("/healthz")).status == 200


async def test_concurrent_retries_with_one_idempotency_key_count_once(
    client: Client, signed: Callable[..., dict[str, str]]
) -> None:
    import asyncio

    body = push_body([update(1, limit=100)], final=True)
    await client.post("/v1/push", data=body, headers=signed(body))
    ask = {"tenant_id": "t1", "customer_id": "c1", "cost": 7}

    async def one() -> tuple[int, bytes]:
        resp = await client.post("/v1/consume", json=ask, headers={"Idempotency-Key": "k-1"})
        return resp.status, await resp.read()

    answers = await asyncio.gather(*(one() for _ in range(20)))
    assert set(answers) == {(200, b'{"allowed":true,"remaining":93,"reason":"ok"}')}
    doc = await (await client.get("/v1/quotas/t1/c1")).json()
    assert doc["used"] == 7
