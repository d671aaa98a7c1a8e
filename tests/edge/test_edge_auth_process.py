"""Issue 20, hole 2, against real `quotaflow edge` processes: consumption needs a
credential, a retried consume counts once, and bodies are bounded in size and time.

Two edge processes, fed by signed pushes (no broker needed): `strict` knows two
applications' tokens and lets nobody else in; `loopback` also lets loopback callers in
without a token (QUOTAFLOW_EDGE_ALLOW_LOOPBACK). Counting is checked through
`GET /v1/quotas` (`used`), as a caller would see it.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import urllib3

from edge.auth import generate_app_token, token_digest
from quotaflow.commands.localkafka import free_port
from tables.quota import QuotaUpdate, Reason
from tests.processes import Component, components, start
from wire import SIGNATURE_HEADER, Kind, Signer, generate_keypair

pytestmark = pytest.mark.timeout(120)

HTTP = urllib3.PoolManager(retries=False, timeout=5.0)
PUSH_KEY, PUSH_PUBLIC = generate_keypair()
RATING, GATEWAY = generate_app_token(), generate_app_token()
READ_TIMEOUT = 1.0  # the edges' QUOTAFLOW_EDGE_BODY_READ_TIMEOUT
ROUTES = (("POST", "/v1/consume"), ("POST", "/v1/check"), ("GET", "/v1/quotas/t1/c1"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Edge:
    port: int
    proc: Component

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        data = orjson.dumps(body) if isinstance(body, dict) else body
        if method == "POST" and data is None:
            data = orjson.dumps({"tenant_id": "t1", "customer_id": "c1", "cost": 1})
        return HTTP.request(method, self.url + path, body=data, headers=headers or {})

    def consume(
        self, customer: str, token: str, cost: int = 1, key: str | None = None
    ) -> urllib3.BaseHTTPResponse:
        """A consume as `token`'s application, with an Idempotency-Key if `key`."""
        headers = bearer(token) if key is None else {**bearer(token), "Idempotency-Key": key}
        return self.call(
            "POST",
            "/v1/consume",
            body={"tenant_id": "t1", "customer_id": customer, "cost": cost},
            headers=headers,
        )

    def used(self, customer: str) -> int:
        resp = self.call("GET", f"/v1/quotas/t1/{customer}", headers=bearer(RATING))
        assert resp.status == 200, resp.data
        used: int = orjson.loads(resp.data)["used"]
        return used

    def metrics(self) -> str:
        text: str = self.call("GET", "/metrics").data.decode()
        return text


def _push(edge: Edge, customers: list[str]) -> None:
    updates = [
        QuotaUpdate(
            tenant_id="t1",
            customer_id=c,
            limit=100,
            used=0,
            remaining=100,
            status="active",
            version=1,
            reason=Reason(kind="policy", id="v1"),
            updated_at=time.time(),
        ).model_dump(mode="json")
        for c in customers
    ]
    body = orjson.dumps(
        {
            "region": "eu",
            "updates": updates,
            "snapshot": {"id": "s1", "final": True},
            "push_id": uuid.uuid4().hex,
        }
    )
    header = Signer(Kind.PUSH, [PUSH_KEY]).header(body)
    resp = HTTP.request(
        "POST", edge.url + "/v1/push", body=body, headers={SIGNATURE_HEADER: header}
    )
    assert resp.status == 200, resp.data


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Edge]]:
    tmp: Path = tmp_path_factory.mktemp("edge-auth")
    tokens = {"rating": token_digest(RATING), "gateway": [token_digest(GATEWAY)]}
    env = {
        "QUOTAFLOW_PUSH_VERIFY_KEYS": orjson.dumps({"eu": [PUSH_PUBLIC]}).decode(),
        "QUOTAFLOW_EDGE_APP_TOKENS": orjson.dumps(tokens).decode(),
        "QUOTAFLOW_EDGE_BODY_READ_TIMEOUT": str(READ_TIMEOUT),
        "QUOTAFLOW_USAGE_SPOOL_DIR": str(tmp / "spool"),
    }
    with components(env, tmp) as started:
        out: dict[str, Edge] = {}
        for name, loopback in (("strict", "false"), ("loopback", "true")):
            port = free_port()
            own = {**env, "QUOTAFLOW_EDGE_ALLOW_LOOPBACK": loopback}
            proc = start(started, ["edge", "--region", "eu", "--port", str(port)], own, tmp)
            proc.wait_port(port)
            out[name] = Edge(port, proc)
            _push(out[name], [f"c{i}" for i in range(1, 10)])
        yield out
    logs = "".join(e.proc.log.read_text(errors="replace") for e in out.values())
    assert "applications allowed to consume" in logs
    for token in (RATING, GATEWAY):
        assert token not in logs, "a token reached a log"


def test_without_a_valid_credential_nothing_is_answered_or_counted(edges: dict[str, Edge]) -> None:
    edge = edges["strict"]
    attempts = {
        "missing_credential": {},
        "bad_credential": bearer(generate_app_token()),
    }
    for method, path in ROUTES:
        for reason, headers in attempts.items():
            resp = edge.call(method, path, headers=headers)
            assert resp.status == 401, (method, path, reason)
            assert orjson.loads(resp.data) == {"error": {"reason": reason}}
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        basic = edge.call(method, path, headers={"Authorization": f"Basic {RATING}"})
        assert (basic.status, orjson.loads(basic.data)["error"]["reason"]) == (
            401,
            "bad_credential",
        )
    # Not even the body is read before the credential: a huge declared body gets the 401.
    huge = edge.call("POST", "/v1/consume", body=b"{}", headers={"Content-Length": str(10**9)})
    assert huge.status == 401
    assert edge.used("c1") == 0  # none of the refused consumes counted
    metrics = edge.metrics()
    assert 'edge_auth_refusals_total{reason="missing_credential",route="consume"} 2.0' in metrics
    for open_route in ("/healthz", "/readyz", "/metrics"):
        assert edge.call("GET", open_route).status == 200, open_route


def test_each_application_token_works_and_is_labelled_in_the_metrics(
    edges: dict[str, Edge],
) -> None:
    edge = edges["strict"]
    first = edge.consume("c2", RATING)
    assert (first.status, orjson.loads(first.data)) == (
        200,
        {"allowed": True, "remaining": 99, "reason": "ok"},
    )
    assert edge.consume("c2", GATEWAY, cost=4).status == 200
    check = edge.call(
        "POST",
        "/v1/check",
        body={"tenant_id": "t1", "customer_id": "c2", "cost": 95},
        headers=bearer(GATEWAY),
    )
    assert orjson.loads(check.data) == {"allowed": True, "remaining": 0, "reason": "ok"}
    assert edge.used("c2") == 5  # the check counted nothing
    metrics = edge.metrics()
    assert 'edge_consume_decisions_total{app="rating",reason="ok"}' in metrics
    assert 'edge_consume_decisions_total{app="gateway",reason="ok"}' in metrics
    assert 'edge_check_decisions_total{app="gateway",reason="ok"} 1.0' in metrics
    assert 'edge_quota_reads_total{app="rating",outcome="found"}' in metrics


def test_loopback_callers_need_no_token_only_where_allowed(edges: dict[str, Edge]) -> None:
    ask = {"tenant_id": "t1", "customer_id": "c3", "cost": 2}
    strict = edges["strict"].call("POST", "/v1/consume", body=ask)
    assert (strict.status, orjson.loads(strict.data)["error"]["reason"]) == (
        401,
        "missing_credential",
    )
    edge = edges["loopback"]
    open_ = edge.call("POST", "/v1/consume", body=ask)
    assert (open_.status, orjson.loads(open_.data)["allowed"]) == (200, True)
    # A credential that is presented is judged, even from loopback.
    wrong = edge.call("POST", "/v1/consume", body=ask, headers=bearer("qfa_wrong"))
    assert (wrong.status, orjson.loads(wrong.data)["error"]["reason"]) == (401, "bad_credential")
    assert edge.used("c3") == 2
    assert 'edge_consume_decisions_total{app="loopback",reason="ok"} 1.0' in edge.metrics()


def test_a_retried_consume_with_the_same_idempotency_key_counts_once(
    edges: dict[str, Edge],
) -> None:
    edge = edges["strict"]
    key = str(uuid.uuid4())
    first = edge.consume("c4", RATING, cost=3, key=key)
    again = edge.consume("c4", RATING, cost=3, key=key)
    assert first.status == again.status == 200
    assert again.data == first.data
    assert orjson.loads(first.data) == {"allowed": True, "remaining": 97, "reason": "ok"}
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert edge.used("c4") == 3

    reused = edge.consume("c4", RATING, cost=5, key=key)
    assert (reused.status, orjson.loads(reused.data)) == (
        422,
        {"error": {"reason": "idempotency_key_reused"}},
    )
    # Keys are scoped per application: the gateway's same key is another call.
    other = edge.consume("c4", GATEWAY, cost=5, key=key)
    assert orjson.loads(other.data)["remaining"] == 92
    # Without a key every call counts.
    edge.consume("c4", RATING)
    edge.consume("c4", RATING)
    assert edge.used("c4") == 10
    bad = edge.consume("c4", RATING, key="x" * 300)
    assert (bad.status, orjson.loads(bad.data)["error"]["reason"]) == (400, "bad_idempotency_key")
    metrics = edge.metrics()
    assert 'edge_idempotency_keys_seen_total{app="rating",outcome="replayed"} 1.0' in metrics
    assert 'edge_idempotency_keys_seen_total{app="rating",outcome="reused"} 1.0' in metrics


def _raw(port: int, head: bytes, body: bytes = b"", wait: float = 10.0) -> tuple[bytes, float]:
    """Sends `head` + `body` and reads the answer's status line; (status line, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        started = time.monotonic()
        sock.sendall(head + body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer.split(b"\r\n", 1)[0], time.monotonic() - started


def _head(path: str, token: str, length: int | None) -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\n%s\r\n\r\n" % (path.encode(), token.encode(), framing)
    )


def test_bodies_over_the_limit_are_413_before_or_while_reading(edges: dict[str, Edge]) -> None:
    edge = edges["strict"]
    # Declared: answered at once, though not one byte of the body was sent.
    status, _ = _raw(edge.port, _head("/v1/consume", RATING, 5000))
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    status, _ = _raw(edge.port, _head("/v1/push", RATING, 16 * 1_048_576 + 1))
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    # Undeclared (chunked): refused once the running length passes the limit.
    chunk = b"x" * 3000
    chunks = b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2
    status, _ = _raw(edge.port, _head("/v1/consume", RATING, None), chunks)
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    metrics = edge.metrics()
    assert 'edge_body_refusals_total{reason="body_too_large",route="consume"} 2.0' in metrics
    assert 'edge_body_refusals_total{reason="body_too_large",route="push"} 1.0' in metrics


def test_a_slow_body_is_408_within_the_read_timeout(edges: dict[str, Edge]) -> None:
    edge = edges["strict"]
    status, took = _raw(edge.port, _head("/v1/consume", RATING, 60), b'{"tenant_id": ')
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert READ_TIMEOUT <= took < READ_TIMEOUT + 2.0, took
    status, took = _raw(edge.port, _head("/v1/push", RATING, 600), b"{")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert READ_TIMEOUT <= took < READ_TIMEOUT + 2.0, took
    assert edge.call("GET", "/healthz").status == 200  # the node serves on
