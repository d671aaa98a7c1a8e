"""Issue 14, part 3, end to end: a real NGINX and a real Caddy, configured with the
snippets in `deploy/gateways/`, ask a real `quotaflow edge` process (fed by a signed push)
before proxying to a small aiohttp upstream. Allowed calls reach the upstream, denied
ones do not and get the sidecar's status and JSON reason, and the quota's `used` at the
edge equals what the upstream served.

The gateways come from `make tools` (Debian's nginx and caddy); a missing one fails.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import urllib3
from aiohttp import web

from edge.auth import generate_app_token, token_digest
from quotaflow.commands.localkafka import free_port
from quotaflow.testing.gateways import CADDYFILE, NGINX_TEMPLATE, caddy_gateway, nginx_gateway
from tables.quota import FeatureQuota, QuotaStatus
from tests.edge.factories import feature_quota, quota_update
from tests.processes import Component, components, start
from wire import SIGNATURE_HEADER, Kind, Signer, generate_keypair

pytestmark = pytest.mark.timeout(120)

HTTP = urllib3.PoolManager(retries=False, timeout=10.0)
PUSH_KEY, PUSH_PUBLIC = generate_keypair()
GATEWAY = generate_app_token()
LIMIT = 10
EXPORT_COST = 5
PERIOD_END = int(time.time()) + 7200
ROUTES = [{"prefix": "/export", "method": "POST", "feature": "export", "cost": EXPORT_COST}]
GATEWAYS = ("nginx", "caddy")


@dataclass
class Upstream:
    """The Rating API stand-in: counts what it served per customer, keeps what it saw."""

    port: int = field(default_factory=free_port)
    served: Counter[str] = field(default_factory=Counter)
    remaining_seen: list[str] = field(default_factory=list)
    # customer -> the gateway's (address, port) of each request served: its connections.
    peers: dict[str, list[object]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        customer = request.headers.get("X-Quotaflow-Customer", "?")
        self.served[customer] += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.setdefault(customer, []).append(peer)
        self.remaining_seen.append(request.headers.get("X-Quota-Remaining", ""))
        return web.json_response({"served": request.path, "customer": customer})


@contextmanager
def _serve_upstream(upstream: Upstream) -> Iterator[Upstream]:
    """Runs the upstream on its own event loop in a thread until the context exits."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", upstream.port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


@dataclass
class Stack:
    edge_port: int
    edge: Component
    upstream: Upstream
    gateways: dict[str, str]  # name -> base URL

    def used(self, customer: str) -> int:
        resp = HTTP.request(
            "GET",
            f"http://127.0.0.1:{self.edge_port}/v1/quotas/t1/{customer}",
            headers={"Authorization": f"Bearer {GATEWAY}"},
        )
        assert resp.status == 200, resp.data
        used: int = orjson.loads(resp.data)["used"]
        return used


def _record(
    customer: str,
    status: QuotaStatus = "active",
    *,
    features: tuple[str, ...] = ("export",),
    rate: float | None = None,
    metered: dict[str, FeatureQuota] | None = None,
) -> dict[str, object]:
    return quota_update(
        customer=customer,
        limit=LIMIT,
        status=status,
        features=features,
        rate=rate,
        period_end=PERIOD_END,
        updated_at=time.time(),
        metered=metered,
    ).model_dump(mode="json")


def _push(port: int) -> None:
    updates = [_record(f"{g}-{i}") for g in GATEWAYS for i in range(3)]
    updates += [_record(f"{g}-blocked", "blocked") for g in GATEWAYS]
    updates += [_record(f"{g}-basic", features=()) for g in GATEWAYS]
    updates += [_record(f"{g}-slow", rate=0.2) for g in GATEWAYS]
    updates += [_record(f"{g}-keepalive") for g in GATEWAYS]
    # `export` as a metered feature with its own quota: one export (cost 5) fits.
    updates += [
        _record(f"{g}-metered", features=(), metered={"export": feature_quota(EXPORT_COST)})
        for g in GATEWAYS
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
        "POST", f"http://127.0.0.1:{port}/v1/push", body=body, headers={SIGNATURE_HEADER: header}
    )
    assert resp.status == 200, resp.data


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, nginx: Path, caddy: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("gateways")
    env = {
        "QUOTAFLOW_PUSH_VERIFY_KEYS": orjson.dumps({"eu": [PUSH_PUBLIC]}).decode(),
        "QUOTAFLOW_EDGE_APP_TOKENS": orjson.dumps({"gateway": token_digest(GATEWAY)}).decode(),
        "QUOTAFLOW_EDGE_ROUTES": orjson.dumps(ROUTES).decode(),
        "QUOTAFLOW_USAGE_SPOOL_DIR": str(tmp / "spool"),
    }
    edge_port = free_port()
    with components(env, tmp) as started, ExitStack() as stack:
        edge = start(started, ["edge", "--region", "eu", "--port", str(edge_port)], env, tmp)
        edge.wait_port(edge_port)
        _push(edge_port)
        upstream = stack.enter_context(_serve_upstream(Upstream()))
        upstream_at, edge_at = f"127.0.0.1:{upstream.port}", f"127.0.0.1:{edge_port}"
        urls = {}
        for name, run, binary in (("nginx", nginx_gateway, nginx), ("caddy", caddy_gateway, caddy)):
            gateway = stack.enter_context(
                run(
                    binary,
                    port=free_port(),
                    upstream=upstream_at,
                    edge=edge_at,
                    token=GATEWAY,
                    log=tmp / f"{name}.log",
                )
            )
            urls[name] = gateway.url
            if os.geteuid() == 0:  # run as root: the gateway must have dropped to nobody
                assert Path(f"/proc/{gateway.proc.pid}").stat().st_uid != 0, name
        yield Stack(edge_port, edge, upstream, urls)
    logs = "".join(p.read_text(errors="replace") for p in tmp.glob("*.log"))
    assert GATEWAY not in logs, "the gateway token reached a log"


def _call(
    stack: Stack, gateway: str, method: str, path: str, customer: str | None
) -> urllib3.BaseHTTPResponse:
    headers = (
        {} if customer is None else {"X-Quotaflow-Tenant": "t1", "X-Quotaflow-Customer": customer}
    )
    return HTTP.request(method, stack.gateways[gateway] + path, headers=headers)


def _reason(resp: urllib3.BaseHTTPResponse) -> str:
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    reason: str = orjson.loads(resp.data)["error"]["reason"]
    return reason


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_allowed_calls_reach_the_upstream_and_denied_ones_do_not(
    stack: Stack, gateway: str
) -> None:
    customer = f"{gateway}-0"
    statuses = [_call(stack, gateway, "GET", "/search?q=1", customer).status for _ in range(4)]
    assert statuses == [200] * 4
    export = _call(stack, gateway, "POST", "/export/csv", customer)  # 5 of the 6 left
    assert export.status == 200
    assert orjson.loads(export.data) == {"served": "/export/csv", "customer": customer}
    # 1 left: another export (5) is refused, searches go on until the quota is spent.
    refused = _call(stack, gateway, "POST", "/export/csv", customer)
    assert (refused.status, _reason(refused)) == (429, "insufficient")
    # Until the period ends (PERIOD_END is fixed at import: the suite may start long before).
    assert abs(int(refused.headers["Retry-After"]) - (PERIOD_END - time.time())) <= 60
    assert _call(stack, gateway, "GET", "/search", customer).status == 200
    exhausted = _call(stack, gateway, "GET", "/search", customer)
    assert (exhausted.status, _reason(exhausted)) == (429, "exhausted")
    assert exhausted.headers["X-Quota-Reason"] == "exhausted"
    assert stack.upstream.served[customer] == 6  # 4 + 1 export + 1
    assert stack.used(customer) == 4 + EXPORT_COST + 1 == LIMIT


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_blocked_unknown_and_anonymous_callers_are_refused_before_the_upstream(
    stack: Stack, gateway: str
) -> None:
    for customer, status, reason in (
        (f"{gateway}-blocked", 403, "blocked"),
        (f"{gateway}-nobody", 403, "unknown_customer"),
        (None, 401, "missing_identity"),
    ):
        resp = _call(stack, gateway, "GET", "/search", customer)
        assert (resp.status, _reason(resp)) == (status, reason), customer
        assert stack.upstream.served[customer or "?"] == 0


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_entitlements_and_rate_limits_are_enforced_through_the_gateway(
    stack: Stack, gateway: str
) -> None:
    basic = f"{gateway}-basic"  # no `export` feature
    assert _call(stack, gateway, "GET", "/search", basic).status == 200
    export = _call(stack, gateway, "POST", "/export/csv", basic)
    assert (export.status, _reason(export)) == (403, "no_entitlement")
    slow = f"{gateway}-slow"  # 0.2 calls/s: one call, then wait 5 s
    assert _call(stack, gateway, "GET", "/search", slow).status == 200
    limited = _call(stack, gateway, "GET", "/search", slow)
    assert (limited.status, _reason(limited)) == (429, "rate_limited")
    assert 4 <= int(limited.headers["Retry-After"]) <= 5
    for customer in (basic, slow):
        assert stack.upstream.served[customer] == stack.used(customer) == 1


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_a_route_naming_a_metered_feature_spends_that_features_own_quota(
    stack: Stack, gateway: str
) -> None:
    customer = f"{gateway}-metered"
    assert _call(stack, gateway, "POST", "/export/csv", customer).status == 200
    spent = _call(stack, gateway, "POST", "/export/csv", customer)
    assert (spent.status, _reason(spent)) == (429, "exhausted")
    assert spent.headers["X-Quota-Reason"] == "exhausted"
    # The default quota (what /search spends) is untouched by the exports.
    assert _call(stack, gateway, "GET", "/search", customer).status == 200
    assert stack.upstream.served[customer] == 2
    assert stack.used(customer) == 1


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_the_remaining_quota_is_passed_on(stack: Stack, gateway: str) -> None:
    customer = f"{gateway}-1"
    before = len(stack.upstream.remaining_seen)
    resp = _call(stack, gateway, "GET", "/search", customer)
    assert resp.status == 200
    # The upstream is told what is left; NGINX also tells the caller.
    assert stack.upstream.remaining_seen[before:] == [str(LIMIT - 1)]
    if gateway == "nginx":
        assert resp.headers["X-Quota-Remaining"] == str(LIMIT - 1)
    assert stack.used(customer) == stack.upstream.served[customer] == 1


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_the_gateway_keeps_its_connection_to_the_rating_api_open(
    stack: Stack, gateway: str
) -> None:
    # A new connection per request costs the gateway more at p99 than the sidecar's answer
    # (BENCHMARKS.md, gateways): the snippet must reuse one.
    customer = f"{gateway}-keepalive"
    calls = 5
    for _ in range(calls):
        assert _call(stack, gateway, "GET", "/search", customer).status == 200
    peers = stack.upstream.peers[customer]
    assert len(peers) == calls
    assert len(set(peers)) < calls, peers


def test_the_gateways_run_the_shipped_snippets() -> None:
    # The fixtures read these very files; a snippet moved or emptied fails here first.
    assert "auth_request /_quotaflow_authorize;" in NGINX_TEMPLATE.read_text()
    assert "forward_auth {$QUOTAFLOW_EDGE}" in CADDYFILE.read_text()
