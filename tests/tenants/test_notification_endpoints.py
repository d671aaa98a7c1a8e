"""Notification endpoints through the admin API over a real writer and broker: the secret
is made, sealed and shown once; a private address is refused at configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from quotaflow.commands.tenants.admin_api import build_admin_app
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.settings import Settings
from quotaflow.tenants.config import audit_topic
from tests.tenants.conftest import tenant_doc
from tests.tenants.topicdump import audit_records, topic_bytes

TOKENS = {"ops": SecretStr("tok-" + "c" * 32)}
AUTH = {"Authorization": "Bearer " + TOKENS["ops"].get_secret_value()}
PUBLIC = "https://93.184.216.34/hooks/quota"  # a public literal: no DNS needed


@pytest.fixture
async def client(writer: TenantWriter) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(build_admin_app(writer, TOKENS))) as c:
        yield c


async def test_an_endpoint_secret_is_shown_once_sealed_and_audited_masked(
    client: TestClient[web.Request, web.Application], settings: Settings
) -> None:
    assert (await client.post("/v1/tenants", json=tenant_doc(), headers=AUTH)).status == 201
    path = "/v1/tenants/acme/notification-endpoints"
    response = await client.post(path, json={"url": PUBLIC, "thresholds": [0.9, 0.5]}, headers=AUTH)
    assert response.status == 201, await response.text()
    added = await response.json()
    secret = added["secret"]
    assert secret.startswith("whsec_")
    assert added["thresholds"] == [0.5, 0.9]
    shown = await (await client.get("/v1/tenants/acme", headers=AUTH)).json()
    (endpoint,) = shown["notification_endpoints"]
    assert endpoint["secret"] == "**********"
    assert endpoint["id"] == added["id"]
    raw = b"".join(await topic_bytes(settings.kafka_bootstrap, settings.topics.tenants))
    assert secret.encode() not in raw  # sealed in the record
    audits = await audit_records(settings.kafka_bootstrap, audit_topic(settings))
    assert audits[-1]["action"] == "add-notification-endpoint"
    assert secret not in str(audits)

    off = await client.post(f"{path}/{added['id']}/disable", headers=AUTH)
    assert (await off.json())["notification_endpoints"][0]["enabled"] is False
    on = await client.post(f"{path}/{added['id']}/enable", headers=AUTH)
    assert (await on.json())["notification_endpoints"][0]["enabled"] is True
    assert (await client.delete(f"{path}/{added['id']}", headers=AUTH)).status == 204
    shown = await (await client.get("/v1/tenants/acme", headers=AUTH)).json()
    assert shown["notification_endpoints"] == []


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000/x", "http://localhost/x", "http://169.254.169.254/x"]
)
async def test_an_endpoint_on_a_private_address_is_refused(
    client: TestClient[web.Request, web.Application], url: str
) -> None:
    assert (await client.post("/v1/tenants", json=tenant_doc(), headers=AUTH)).status == 201
    response = await client.post(
        "/v1/tenants/acme/notification-endpoints", json={"url": url}, headers=AUTH
    )
    assert response.status == 422
    refusal = await response.json()
    assert refusal["error"] == "invalid_tenant"
    assert "private_address" in refusal["message"]
