"""register-webhook against stripe-mock (the shape oracle for the create call).

stripe-mock answers webhook endpoint creation without the `secret` that Stripe returns on
create. The first test shows that answer is refused (and the endpoint removed); the second
runs through a forwarding proxy that adds the secret to stripe-mock's answer, as Stripe's
create response carries it, and checks it is stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import aiohttp
import orjson
import pytest
import stripe
from aiohttp import web
from aiohttp.test_utils import TestServer

from quotaflow.commands.tenants.stripe_webhooks import (
    STRIPE_API_VERSION,
    WEBHOOK_EVENT_TYPES,
    create_endpoint,
)
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.tenants.exceptions import WebhookRegistrationError
from tests.tenants.conftest import tenant_doc

URL = "https://hooks.example.com/v1/webhooks/stripe/acme"
SECRET = "whsec_from_stripe_create_response"


class SecretAddingProxy:
    """Forwards to stripe-mock; records create calls and adds `secret` to their answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.creates: list[dict[str, list[str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as upstream,
        ):
            payload = await upstream.read()
            status = upstream.status
        if request.method == "POST" and request.path == "/v1/webhook_endpoints" and status == 200:
            self.creates.append(parse_qs(body.decode()))
            payload = orjson.dumps({**orjson.loads(payload), "secret": SECRET})
        return web.Response(body=payload, status=status, content_type="application/json")


@pytest.fixture
async def proxy(stripe_mock: str) -> AsyncIterator[tuple[str, SecretAddingProxy]]:
    forward = SecretAddingProxy(stripe_mock)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward.handle)
    async with TestServer(app) as server:
        yield str(server.make_url("")).rstrip("/"), forward


async def test_registers_exact_event_types_and_stores_secret(
    writer: TenantWriter, proxy: tuple[str, SecretAddingProxy]
) -> None:
    base, forward = proxy
    # stripe-mock accepts sk_test_ keys only (a restricted rk_ key is refused, see below).
    tenant = await writer.add(tenant_doc("acme", stripe_api_key="sk_test_123"), actor="test")
    endpoint = await create_endpoint(tenant, URL, api_base=base)
    assert endpoint.endpoint_id.startswith("we_")
    assert SECRET not in repr(endpoint)
    (sent,) = forward.creates
    events = [sent[f"enabled_events[{i}]"][0] for i in range(len(WEBHOOK_EVENT_TYPES))]
    assert events == list(WEBHOOK_EVENT_TYPES)
    assert f"enabled_events[{len(WEBHOOK_EVENT_TYPES)}]" not in sent
    assert sent["api_version"] == [STRIPE_API_VERSION]
    assert sent["url"] == [URL]

    stored = await writer.roll_webhook_secret(
        "acme", endpoint.secret, "test", overlap=0, endpoint_id=endpoint.endpoint_id
    )
    assert stored.webhook_endpoint_id == endpoint.endpoint_id
    assert [s.secret.get_secret_value() for s in stored.webhook_secrets] == [SECRET]


async def test_answer_without_secret_is_refused(writer: TenantWriter, stripe_mock: str) -> None:
    tenant = await writer.add(tenant_doc("acme", stripe_api_key="sk_test_123"), actor="test")
    with pytest.raises(WebhookRegistrationError, match="no signing secret"):
        await create_endpoint(tenant, URL, api_base=stripe_mock)


async def test_refusal_never_repeats_the_api_key(writer: TenantWriter, stripe_mock: str) -> None:
    tenant = await writer.add(tenant_doc("acme"), actor="test")  # rk_ key: stripe-mock says 401
    assert tenant.stripe_api_key is not None
    with pytest.raises(WebhookRegistrationError, match="HTTP 401") as caught:
        await create_endpoint(tenant, URL, api_base=stripe_mock)
    assert tenant.stripe_api_key.get_secret_value() not in str(caught.value)


async def test_wrong_route_or_missing_key_is_refused(writer: TenantWriter) -> None:
    tenant = await writer.add(tenant_doc("acme"), actor="test")
    with pytest.raises(WebhookRegistrationError, match="must end with"):
        await create_endpoint(tenant, "https://hooks.example.com/v1/webhooks/stripe/other")
    with pytest.raises(WebhookRegistrationError, match="https"):
        await create_endpoint(tenant, "http://hooks.example.com/v1/webhooks/stripe/acme")
    keyless = await writer.add(tenant_doc("beta", stripe_api_key=None), actor="test")
    with pytest.raises(WebhookRegistrationError, match="no Stripe API key"):
        await create_endpoint(keyless, "https://h.example.com/v1/webhooks/stripe/beta")


def test_api_version_is_pinned_not_the_librarys_moving_default() -> None:
    assert STRIPE_API_VERSION.startswith("20")
    assert stripe.api_version >= STRIPE_API_VERSION  # the library reads what we pin


def test_every_subscribed_type_is_handled_by_the_billing_agent() -> None:
    from tables.billing import HANDLED_TYPES

    # The agent also reads invoice.payment_succeeded (older endpoints, localstripe); at the
    # pinned version invoice.paid carries the same signal, so new endpoints skip it.
    assert set(WEBHOOK_EVENT_TYPES) <= set(HANDLED_TYPES)
