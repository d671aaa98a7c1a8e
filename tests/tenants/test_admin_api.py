"""The admin HTTP API over a real writer and broker, through aiohttp's test client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from quotaflow.commands.tenants.admin_api import build_admin_app
from quotaflow.commands.tenants.openapi import render, stored_openapi
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.settings import Settings
from quotaflow.tenants.config import audit_topic
from tests.tenants.conftest import tenant_doc
from tests.tenants.topicdump import audit_records

TOKENS = {"ops-old": SecretStr("tok-old-" + "a" * 32), "ops-new": SecretStr("tok-new-" + "b" * 32)}
AUTH = {"Authorization": "Bearer " + TOKENS["ops-new"].get_secret_value()}


@pytest.fixture
async def client(writer: TenantWriter) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(build_admin_app(writer, TOKENS))) as c:
        yield c


async def test_requests_without_a_valid_token_get_401(
    client: TestClient[web.Request, web.Application],
) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = await client.get("/v1/tenants/acme", headers=headers)
        assert response.status == 401
        assert (await response.json())["error"] == "unauthorized"
    response = await client.post("/v1/tenants", json=tenant_doc(), headers={})
    assert response.status == 401


async def test_crud_with_masked_responses_and_audited_actor(
    client: TestClient[web.Request, web.Application], settings: Settings
) -> None:
    doc = tenant_doc("acme")
    response = await client.post("/v1/tenants", json=doc, headers=AUTH)
    assert response.status == 201
    body = await response.text()
    assert doc["stripe_api_key"] not in body
    assert orjson.loads(body)["stripe_api_key"] == "**********"

    response = await client.post("/v1/tenants", json=doc, headers=AUTH)
    assert response.status == 409

    twin = tenant_doc("acme-twin", stripe_account=doc["stripe_account"])
    response = await client.post("/v1/tenants", json=twin, headers=AUTH)
    assert response.status == 409
    assert (await response.json())["error"] == "account_in_use"

    old = {"Authorization": "Bearer " + TOKENS["ops-old"].get_secret_value()}
    response = await client.patch("/v1/tenants/acme", json={"status": "suspended"}, headers=old)
    assert response.status == 200
    assert (await response.json())["status"] == "suspended"

    response = await client.get("/v1/tenants/acme", headers=AUTH)
    assert (await response.json())["status"] == "suspended"
    assert [t["id"] for t in await (await client.get("/v1/tenants", headers=AUTH)).json()] == [
        "acme"
    ]

    assert (await client.delete("/v1/tenants/acme", headers=AUTH)).status == 204
    assert (await client.get("/v1/tenants/acme", headers=AUTH)).status == 404
    assert (await client.delete("/v1/tenants/acme", headers=AUTH)).status == 404

    audit = await audit_records(settings.kafka_bootstrap, audit_topic(settings))
    assert [(a["action"], a["actor"]) for a in audit] == [
        ("add", "admin:ops-new"),
        ("update", "admin:ops-old"),
        ("delete", "admin:ops-new"),
    ]


async def test_invalid_documents_are_refused_naming_the_field(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.post(
        "/v1/tenants", json=tenant_doc(plans={"pro": {"quota": "lots"}}), headers=AUTH
    )
    assert response.status == 422
    error = await response.json()
    assert error["error"] == "invalid_tenant"
    assert error["field"] == "plans.pro.quota"
    response = await client.post("/v1/tenants", data=b"{not json", headers=AUTH)
    assert response.status == 400
    response = await client.post("/v1/tenants", json=[1], headers=AUTH)
    assert response.status == 400
    assert (await client.get("/v1/tenants", headers=AUTH)).status == 200


async def test_openapi_is_served_and_current(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/v1/openapi.json")
    assert response.status == 200
    served = await response.read()
    assert served == stored_openapi()
    assert served.strip() == render().strip(), "run: python -m quotaflow.commands.tenants.openapi"
    paths = orjson.loads(served)["paths"]
    assert set(paths["/v1/tenants/{tenant_id}"]) >= {"get", "patch", "delete"}
