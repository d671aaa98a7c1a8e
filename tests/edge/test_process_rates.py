"""A real `quotaflow edge` process enforces a record's features and rate limit, with its
configured share of the rate (QUOTAFLOW_EDGE_RATE_SHARE), over HTTP."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import urllib3

from quotaflow.commands.localkafka import free_port
from tables.quota import QuotaUpdate, Reason
from tests.processes import EDGE_AUTH, components, edge_auth_env, start
from wire import SIGNATURE_HEADER, Kind, Signer, generate_keypair

pytestmark = pytest.mark.timeout(60)


def record(customer: str, rate: float | None) -> dict[str, Any]:
    return QuotaUpdate(
        tenant_id="t1",
        customer_id=customer,
        limit=100,
        used=0,
        remaining=100,
        status="active",
        version=1,
        reason=Reason(kind="policy", id="test"),
        updated_at=time.time(),
        rate_per_second=rate,
        features=("bulk",),
    ).model_dump(mode="json")


def test_an_edge_process_enforces_features_and_its_share_of_the_rate(tmp_path: Path) -> None:
    push_key, push_public = generate_keypair()
    port = free_port()
    env = {
        "QUOTAFLOW_PUSH_VERIFY_KEYS": orjson.dumps({"eu": [push_public]}).decode(),
        "QUOTAFLOW_EDGE_RATE_SHARE": "0.5",
        **edge_auth_env(),
    }
    http = urllib3.PoolManager()
    base = f"http://127.0.0.1:{port}"

    def post(path: str, doc: object, headers: dict[str, str] | None = None) -> Any:
        body = orjson.dumps(doc)
        resp = http.request("POST", base + path, body=body, headers=headers, timeout=5.0)
        assert resp.status == 200, resp.data
        return orjson.loads(resp.data)

    def consume(customer: str, **fields: object) -> dict[str, Any]:
        answer: dict[str, Any] = post(
            "/v1/consume", {"tenant_id": "t1", "customer_id": customer, **fields}, EDGE_AUTH
        )
        return answer

    with components({}, tmp_path) as started:
        edge = start(started, ["edge", "--region", "eu", "--port", str(port)], env, tmp_path)
        edge.wait_port(port)
        # 0.4 calls/s, half of it here: 0.2 tokens a second, a burst of 1.
        updates = [record("slow", 0.4), record("free", None)]
        push = orjson.dumps(
            {
                "region": "eu",
                "updates": updates,
                "snapshot": {"id": "s1", "final": True},
                "push_id": uuid.uuid4().hex,
            }
        )
        signature = Signer(Kind.PUSH, [push_key]).header(push)
        resp = http.request(
            "POST", base + "/v1/push", body=push, headers={SIGNATURE_HEADER: signature}
        )
        assert resp.status == 200, resp.data
        assert orjson.loads(resp.data)["applied"] == 2

        assert consume("slow", feature="bulk") == {"allowed": True, "remaining": 99, "reason": "ok"}
        denied = consume("slow", feature="bulk")
        assert (denied["allowed"], denied["reason"]) == (False, "rate_limited")
        assert 3.0 < denied["retry_after"] <= 5.0  # 1 / 0.2 s, less the time since the call
        assert consume("slow", feature="sso")["reason"] == "no_entitlement"
        assert [consume("free", feature="bulk")["allowed"] for _ in range(20)] == [True] * 20

        metrics = http.request("GET", base + "/metrics", timeout=5.0).data.decode()
        assert 'edge_consume_decisions_total{app="tests",reason="rate_limited"} 1.0' in metrics
        assert 'edge_consume_decisions_total{app="tests",reason="no_entitlement"} 1.0' in metrics
        assert 'edge_consume_decisions_total{app="tests",reason="ok"} 21.0' in metrics
