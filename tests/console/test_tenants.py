"""Tenants pages: the list at 10,000 tenants, a tenant's page, and its changes through the
same writer calls as the CLI, audited under the operator's token name, no secret shown."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from quotaflow.commands.console.app import build_console_app
from quotaflow.commands.console.server import build_admin_server
from quotaflow.commands.tenants.documents import parse_tenant
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.registry import StaticTenantRegistry
from quotaflow.settings import Settings
from quotaflow.tenants.config import audit_topic
from tables.tenant import Tenant
from tests.console.conftest import TOKENS, Client, post, sign_in
from tests.tenants.conftest import tenant_doc
from tests.tenants.topicdump import audit_records

ROW = re.compile(r'<td><a href="/console/tenants/([a-z0-9_-]+)">')


class CountingRegistry(StaticTenantRegistry):
    """A static registry that counts full scans (each builds every tenant in a topic one)."""

    scans = 0

    def __iter__(self) -> Iterator[Tenant]:
        self.scans += 1
        return super().__iter__()


async def test_ten_thousand_tenants_page_by_fifty_and_search(
    settings: Settings, writer: TenantWriter
) -> None:
    tenants = [
        parse_tenant(tenant_doc(f"t{i:05d}", name=f"Tenant {i}", stripe_account=None))
        for i in range(10_000)
    ]
    registry = CountingRegistry(tenants)
    app = web.Application()
    app.add_subapp("/console", build_console_app(settings, writer, registry=registry))
    async with TestClient(TestServer(app)) as client:
        await sign_in(client)
        first = await (await client.get("/console/tenants")).text()
        assert ROW.findall(first) == [f"t{i:05d}" for i in range(50)]
        assert "page 1 of 200" in first
        last = await (await client.get("/console/tenants?page=200")).text()
        assert ROW.findall(last)[-1] == "t09999"
        beyond = await (await client.get("/console/tenants?page=999")).text()
        assert "page 200 of 200" in beyond
        found = await (await client.get("/console/tenants?q=t0424")).text()
        assert ROW.findall(found) == [f"t0424{i}" for i in range(10)]
        by_name = await (await client.get("/console/tenants?q=tenant+9999")).text()
        assert ROW.findall(by_name) == ["t09999"]
        none = await (await client.get("/console/tenants?status=suspended")).text()
        assert ROW.findall(none) == []
        # Changes reach the list through the registry's listener, without a new scan.
        registry.put(parse_tenant(tenant_doc("a-first", name="First", stripe_account=None)))
        registry.remove("t00000")
        suspended = parse_tenant(tenant_doc("t00001", name="Tenant 1", stripe_account=None))
        registry.put(suspended.model_copy(update={"status": "suspended"}))
        first = await (await client.get("/console/tenants")).text()
        assert ROW.findall(first)[:3] == ["a-first", "t00001", "t00002"]
        assert "page 1 of 200" in first
        only = await (await client.get("/console/tenants?status=suspended")).text()
        assert ROW.findall(only) == ["t00001"]
        assert ROW.findall(await (await client.get("/console/tenants?q=t00000")).text()) == []
        assert registry.scans == 1


async def test_onboard_roll_suspend_resume_audited_with_no_secret_shown(
    client: Client, writer: TenantWriter, settings: Settings
) -> None:
    csrf = await sign_in(client, "alice")
    blank = await (await client.get("/console/tenants-new")).text()
    assert 'id="onboard-form"' in blank
    assert 'value="eu"' in blank
    assert 'value="us"' in blank
    secret, api_key = "whsec_console_" + "s" * 24, "rk_test_console_" + "k" * 24
    form = {
        "csrf": csrf,
        "id": "globex",
        "name": "Globex",
        "mode": "test",
        "stripe_account": "acct_1Globex",
        "stripe_api_key": api_key,
        "webhook_secret": secret,
        "regions": "eu",
        "plans": "pro=1000\r\nmax=unlimited\r\n",
    }
    response = await post(client, "/console/tenants-new", form)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/console/tenants/globex?done=onboarded"
    tenant = writer.registry.get("globex")
    assert tenant is not None
    assert tenant.plans["pro"].quota == 1000
    assert tenant.plans["max"].quota is None
    assert tenant.stripe_api_key is not None
    assert tenant.stripe_api_key.get_secret_value() == api_key

    page = await (await client.get("/console/tenants/globex")).text()
    listing = await (await client.get("/console/tenants")).text()
    for html in (page, listing):
        assert secret not in html
        assert api_key not in html
    assert "<code>pro</code>" in page
    assert "unlimited" in page

    # The same id again: refused (409), secrets not echoed back into the form.
    again = await post(client, "/console/tenants-new", form)
    assert again.status == 409
    assert secret not in await again.text()
    assert api_key not in await again.text()
    bad = await post(client, "/console/tenants-new", {**form, "id": "initech", "plans": "x=-1"})
    assert bad.status == 422
    assert "plans.x.quota" in await bad.text()

    new_secret = "whsec_rolled_" + "r" * 24
    rolled = await post(
        client,
        "/console/tenants/globex/roll-secret",
        {"csrf": csrf, "new_secret": new_secret, "overlap": "1h"},
    )
    assert rolled.status == 303
    tenant = writer.registry.get("globex")
    assert tenant is not None
    assert [s.expires_at is None for s in tenant.webhook_secrets] == [True, False]
    assert new_secret not in await (await client.get("/console/tenants/globex")).text()

    assert (await post(client, "/console/tenants/globex/suspend", {"csrf": csrf})).status == 303
    suspended = writer.registry.get("globex")
    assert suspended is not None
    assert suspended.status == "suspended"
    csrf_bob = await sign_in(client, "bob")
    assert (await post(client, "/console/tenants/globex/resume", {"csrf": csrf_bob})).status == 303
    resumed = writer.registry.get("globex")
    assert resumed is not None
    assert resumed.status == "active"

    audit = await audit_records(settings.kafka_bootstrap, audit_topic(settings))
    assert [(a["action"], a["actor"]) for a in audit] == [
        ("add", "console:alice"),
        ("roll-webhook-secret", "console:alice"),
        ("suspend", "console:alice"),
        ("resume", "console:bob"),
    ]
    assert secret not in str(audit)
    assert new_secret not in str(audit)


async def test_an_unknown_tenant_is_404(client: Client) -> None:
    csrf = await sign_in(client)
    assert (await client.get("/console/tenants/nobody")).status == 404
    assert (await post(client, "/console/tenants/nobody/suspend", {"csrf": csrf})).status == 404


async def test_the_tenant_page_asks_stripe_for_disabled_endpoints_only_when_asked(
    settings_factory: Callable[..., Settings], writer: TenantWriter, stripe_mock: str
) -> None:
    await writer.add(tenant_doc("acme", stripe_api_key="sk_test_123"), "test")
    asking = settings_factory(
        admin_tokens=TOKENS, regions=["eu", "us"], stripe_api_base=stripe_mock
    )

    def check(html: str) -> str:
        return html[html.index('id="stripe-check"') :].split("</dd>")[0]

    async with TestClient(TestServer(build_admin_server(asking, writer))) as client:
        await sign_in(client)
        plain = await (await client.get("/console/tenants/acme")).text()
        assert 'id="ask-stripe"' in check(plain)
        asked = await (await client.get("/console/tenants/acme?stripe=1")).text()
        # stripe-mock's fixture endpoint is enabled: listed with the tenant's key, none off.
        assert check(asked).endswith(">none disabled")
