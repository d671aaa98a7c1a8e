"""The console over a real tenant writer on the session broker, through aiohttp's test
client; `Operator` signs in through the login form as a browser would."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from quotaflow.commands.console.server import build_admin_server
from quotaflow.commands.tenants.audit import ensure_audit_topic
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from tests.tenants.conftest import (  # noqa: F401 - fixtures used here
    keyring,
    keys,
    open_topic_registry,
    writer,
)

TOKENS = {
    "alice": SecretStr("qf-admin-alice-" + "a" * 32),
    "bob": SecretStr("qf-admin-bob-" + "b" * 32),
}
Client = TestClient[web.Request, web.Application]
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')


@pytest.fixture
async def settings(settings_factory: Callable[..., Settings]) -> Settings:
    """The tenants tests' settings, with the admin tokens and two regions."""
    s = settings_factory(admin_tokens=TOKENS, regions=["eu", "us"])
    await ensure_topics(s)
    await ensure_audit_topic(s)
    return s


@pytest.fixture
async def client(settings: Settings, writer: TenantWriter) -> AsyncIterator[Client]:  # noqa: F811
    async with TestClient(TestServer(build_admin_server(settings, writer))) as c:
        yield c


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, html[:2000]
    return found.group(1)


async def sign_in(client: Client, name: str = "alice") -> str:
    """Signs in through the form; returns the CSRF token of the session's pages."""
    form = await client.get("/console/login")
    assert form.status == 200
    login_csrf = _LOGIN_CSRF.search(await form.text())
    assert login_csrf is not None
    response = await client.post(
        "/console/login",
        data={
            "token": TOKENS[name].get_secret_value(),
            "login_csrf": login_csrf.group(1),
            "next": "/console/tenants",
        },
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    page = await client.get("/console/tenants")
    assert page.status == 200
    return csrf_of(await page.text())


async def post(client: Client, path: str, data: dict[str, Any]) -> Any:
    return await client.post(path, data=data, allow_redirects=False)
