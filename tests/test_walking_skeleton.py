"""The thinnest real path through quotaflow, every hop a real process on a real broker.

The official `stripe` library creates a customer and a subscription on localstripe;
localstripe signs and delivers the webhooks to the ingress; the worker fetches the
subscription back from localstripe, computes the quota and publishes it; the regional
pusher delivers it to the edge, where `GET /v1/quotas/...` answers it, and `POST
/v1/consume` enforces the plan's rate limit and features.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import stripe
import urllib3

from quotaflow.commands.localkafka import free_port
from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from tables.tenant import PlanEntry, Tenant, WebhookSecret
from tests.processes import EDGE_AUTH, components, edge_auth_env, start
from wire import generate_keypair

pytestmark = [pytest.mark.kafka, pytest.mark.stripe, pytest.mark.timeout(240)]


def _poll_json(url: str, ready: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    http = urllib3.PoolManager()
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = http.request("GET", url, headers=EDGE_AUTH, timeout=2.0)
            last = f"{response.status} {response.data[:200]!r}"
            if response.status == 200:
                doc: dict[str, Any] = orjson.loads(response.data)
                if ready(doc):
                    return doc
        except urllib3.exceptions.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become ready within {timeout}s; last answer: {last}")


def test_subscription_on_stripe_becomes_quota_at_the_edge(
    settings_factory: Callable[..., Settings], localstripe: str, tmp_path: Path
) -> None:
    settings = settings_factory()
    secret = "whsec_" + secrets.token_hex(16)
    api_key = "sk_test_" + secrets.token_hex(12)
    plan_id = "plan_rating_" + secrets.token_hex(4)
    tenant = Tenant(
        id="acme",
        webhook_secrets=(WebhookSecret(id="s1", secret=secret),),
        stripe_api_key=api_key,
        regions=("eu",),
        # Per unit of quantity: 3 units make 0.3 calls a second (a burst of 1) and `bulk`.
        plans={plan_id: PlanEntry(quota=500, rate_per_second=0.1, features=("bulk",))},
    )
    tenants_file = tmp_path / "tenants.json"
    tenants_file.write_bytes(dump_tenants([tenant]))
    ingress_port, edge_port = free_port(), free_port()
    push_key, push_public = generate_keypair()
    env = {
        "QUOTAFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "QUOTAFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "QUOTAFLOW_PARTITIONS": str(settings.partitions),
        "QUOTAFLOW_APP_ID": settings.app_id,
        "QUOTAFLOW_DATA_DIR": str(tmp_path / "worker"),
        "QUOTAFLOW_STORE": "memory://",
        "QUOTAFLOW_TENANTS_FILE": str(tenants_file),
        "QUOTAFLOW_STRIPE_API_BASE": localstripe,
        "QUOTAFLOW_EDGE_NODES": orjson.dumps({"eu": [f"http://127.0.0.1:{edge_port}"]}).decode(),
        "QUOTAFLOW_PUSH_VERIFY_KEYS": orjson.dumps({"eu": [push_public]}).decode(),
        **edge_auth_env(),
    }
    pusher_env = {**env, "QUOTAFLOW_PUSH_SIGNING_KEYS": orjson.dumps({"eu": [push_key]}).decode()}
    with components(env, tmp_path) as started:
        ingress = start(
            started, ["ingress", "--port", str(ingress_port), "--workers", "1"], env, tmp_path
        )
        start(started, ["worker"], env, tmp_path)
        start(started, ["push", "--region", "eu"], pusher_env, tmp_path)
        edge = start(started, ["edge", "--region", "eu", "--port", str(edge_port)], env, tmp_path)
        ingress.wait_port(ingress_port)
        edge.wait_port(edge_port)

        http = urllib3.PoolManager()
        hook = http.request(
            "POST",
            f"{localstripe}/_config/webhooks/quotaflow",
            fields={
                "url": f"http://127.0.0.1:{ingress_port}/v1/webhooks/stripe/acme",
                "secret": secret,
            },
            encode_multipart=False,
        )
        assert hook.status == 200, hook.data

        client = stripe.StripeClient(
            api_key, base_addresses={"api": localstripe}, max_network_retries=0
        )
        client.v1.plans.create(
            params={
                "id": plan_id,
                "amount": 2000,
                "currency": "usd",
                "interval": "month",
                "product": {"name": "Rating API"},
            }
        )
        card = client.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {
                    "number": "4242424242424242",
                    "exp_month": 12,
                    "exp_year": 2040,
                    "cvc": "123",
                },
            }
        )
        customer = client.v1.customers.create(params={"email": "rater@example.com"})
        client.v1.payment_methods.attach(card.id, params={"customer": customer.id})
        client.v1.customers.update(
            customer.id, params={"invoice_settings": {"default_payment_method": card.id}}
        )
        client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"plan": plan_id, "quantity": 3}],
            }
        )

        quota = _poll_json(
            f"http://127.0.0.1:{edge_port}/v1/quotas/acme/{customer.id}",
            lambda doc: doc.get("limit") == 1500,
            timeout=90,
        )
        assert quota["status"] == "active"
        assert (quota["used"], quota["remaining"]) == (0, 1500)
        assert quota["version"] >= 1
        assert quota["period_end"] > time.time()

        missing = http.request(
            "GET",
            f"http://127.0.0.1:{edge_port}/v1/quotas/acme/cus_nobody",
            headers=EDGE_AUTH,
            timeout=2.0,
        )
        assert missing.status == 404

        assert quota["rate_per_second"] == pytest.approx(0.3)
        assert quota["features"] == ["bulk"]

        def consume(**fields: object) -> dict[str, Any]:
            resp = http.request(
                "POST",
                f"http://127.0.0.1:{edge_port}/v1/consume",
                body=orjson.dumps({"tenant_id": "acme", "customer_id": customer.id, **fields}),
                headers={**EDGE_AUTH, "Content-Type": "application/json"},
                timeout=2.0,
            )
            assert resp.status == 200, resp.data
            answer: dict[str, Any] = orjson.loads(resp.data)
            return answer

        assert consume(feature="export")["reason"] == "no_entitlement"
        assert consume(feature="bulk", cost=10) == {
            "allowed": True,
            "remaining": 1490,
            "reason": "ok",
        }
        limited = consume(feature="bulk", cost=10)
        assert (limited["allowed"], limited["reason"]) == (False, "rate_limited")
        assert 0 < limited["retry_after"] <= 3.334
