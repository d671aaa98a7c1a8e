"""Sign-in, and the proof that a change without a session or without the session's CSRF
token changes nothing (plain HTTP requests against the real writer and broker)."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from quotaflow.commands.console.guard import LOGIN_COOKIE
from quotaflow.commands.console.throttle import PER_ADDRESS, WINDOW, SignInThrottle
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.settings import Settings
from quotaflow.tenants.config import audit_topic
from tests.console.conftest import TOKENS, Client, csrf_of, post, sign_in
from tests.tenants.conftest import tenant_doc
from tests.tenants.topicdump import audit_records


async def test_pages_redirect_to_the_login_form_without_a_session(client: Client) -> None:
    for path in ("/console/tenants", "/console/customers", "/console/deadletters"):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 303
        assert response.headers["Location"].startswith("/console/login?next=")
    response = await client.get("/console/pipeline")  # followed to the form
    assert response.status == 200
    assert 'name="token"' in await response.text()


async def test_sign_in_sets_a_strict_http_only_expiring_cookie(client: Client) -> None:
    form = await client.get("/console/login")
    login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', await form.text())
    assert login_csrf is not None
    response = await post(
        client,
        "/console/login",
        {"token": TOKENS["bob"].get_secret_value(), "login_csrf": login_csrf.group(1)},
    )
    assert response.status == 303
    cookie = next(v for v in response.headers.getall("Set-Cookie") if v.startswith("qf_console="))
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Max-Age=28800" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP, nothing configured
    assert TOKENS["bob"].get_secret_value() not in cookie
    page = await client.get("/console/tenants")
    assert '<b id="operator">bob</b>' in await page.text()
    for name, value in {
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }.items():
        assert page.headers[name] == value
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


async def test_the_cookie_is_secure_behind_tls(client: Client) -> None:
    form = await client.get("/console/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in form.headers["Set-Cookie"]


async def test_a_wrong_token_or_a_forged_login_form_opens_no_session(client: Client) -> None:
    form = await client.get("/console/login")
    login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', await form.text())
    assert login_csrf is not None
    wrong = await post(
        client, "/console/login", {"token": "qf-admin-nope", "login_csrf": login_csrf.group(1)}
    )
    assert wrong.status == 401
    assert "qf-admin-nope" not in await wrong.text()
    client.session.cookie_jar.clear()
    forged = await post(
        client,
        "/console/login",
        {"token": TOKENS["alice"].get_secret_value(), "login_csrf": "made-up"},
    )
    assert forged.status == 403
    assert all(not v.startswith("qf_console=") for v in forged.headers.getall("Set-Cookie", []))
    cross = await client.post(
        "/console/login",
        data={"token": TOKENS["alice"].get_secret_value(), "login_csrf": "x"},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert cross.status == 403
    assert (await client.get("/console/tenants", allow_redirects=False)).status == 303


async def test_changes_without_a_session_or_csrf_token_change_nothing(
    client: Client, writer: TenantWriter, settings: Settings
) -> None:
    await writer.add(tenant_doc("acme"), "test")
    before = await audit_records(settings.kafka_bootstrap, audit_topic(settings))
    onboard = {"id": "mallory", "name": "M", "mode": "test", "regions": "eu"}
    roll = {"new_secret": "whsec_attacker_chosen_secret", "overlap": "0s"}

    # No session at all: 401 and nothing done.
    for path, data in (
        ("/console/tenants/acme/suspend", {}),
        ("/console/tenants/acme/roll-secret", roll),
        ("/console/tenants-new", onboard),
        ("/console/deadletters/redrive", {"mode": "dry-run"}),
    ):
        response = await post(client, path, data)
        assert response.status == 401, path
        assert response.headers["X-Quotaflow-Reason"] == "no_session"

    csrf = await sign_in(client, "alice")
    # A session, but no token, a wrong one, another session's, or from another origin.
    other = csrf_of(await (await client.get("/console/tenants")).text())
    assert other == csrf
    bad_tokens: list[dict[str, str]] = [{}, {"csrf": ""}, {"csrf": csrf[:-2] + "xx"}]
    for extra in bad_tokens:
        for path, data in (
            ("/console/tenants/acme/suspend", {}),
            ("/console/tenants/acme/roll-secret", roll),
            ("/console/tenants-new", onboard),
        ):
            response = await post(client, path, {**data, **extra})
            assert response.status == 403, (path, extra)
            assert response.headers["X-Quotaflow-Reason"] == "csrf"
    cross = await client.post(
        "/console/tenants/acme/suspend",
        data={"csrf": csrf},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        allow_redirects=False,
    )
    assert cross.status == 403

    assert writer.registry.get("mallory") is None
    acme = writer.registry.get("acme")
    assert acme is not None
    assert acme.status == "active"
    assert [s.id for s in acme.webhook_secrets] == ["s1"]
    after = await audit_records(settings.kafka_bootstrap, audit_topic(settings))
    assert after == before

    # The same request with the token goes through: the refusals were the guard's.
    response = await post(client, "/console/tenants/acme/suspend", {"csrf": csrf})
    assert response.status == 303
    suspended = writer.registry.get("acme")
    assert suspended is not None
    assert suspended.status == "suspended"


async def test_sign_out_ends_the_session(client: Client) -> None:
    csrf = await sign_in(client)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/console/"))["qf_console"]
    response = await post(client, "/console/logout", {"csrf": csrf})
    assert response.status == 303
    # Even a copy of the cookie kept by someone no longer works in this process.
    replay = await client.get(
        "/console/tenants",
        headers={"Cookie": f"qf_console={cookie.value}"},
        allow_redirects=False,
    )
    assert replay.status == 303


async def test_secure_cookies_when_configured_and_no_console_when_disabled(
    settings: Settings, writer: TenantWriter
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from quotaflow.commands.console.server import build_admin_server

    forced = settings.model_copy(update={"console_secure_cookie": True})
    async with TestClient(TestServer(build_admin_server(forced, writer))) as client:
        form = await client.get("/console/login")
        assert "Secure" in form.headers["Set-Cookie"]
    off = settings.model_copy(update={"console_enabled": False})
    async with TestClient(TestServer(build_admin_server(off, writer))) as client:
        assert (await client.get("/console/login")).status == 404
        # The admin API is still there.
        assert (await client.get("/v1/openapi.json")).status == 200


async def test_failed_sign_ins_past_the_limit_answer_429_even_to_the_right_token(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Guesses sent in parallel (the 0.5 s delay alone would not slow them) all count: past
    PER_ADDRESS failures the address is refused with Retry-After, the right token too."""
    form = await client.get("/console/login")
    login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', await form.text())
    assert login_csrf is not None
    nonce = login_csrf.group(1)
    cookies = {LOGIN_COOKIE: nonce}

    async def attempt(token: str) -> tuple[int, str | None]:
        # Each answer sets a fresh form cookie: send the one of the form we filled in.
        response = await client.post(
            "/console/login",
            data={"token": token, "login_csrf": nonce},
            cookies=cookies,
            allow_redirects=False,
        )
        return response.status, response.headers.get("Retry-After")

    with caplog.at_level(logging.INFO, logger="quotaflow.console"):
        answers = await asyncio.gather(
            *(attempt(f"qf-admin-guess-{i}") for i in range(PER_ADDRESS + 5))
        )
        statuses = sorted(status for status, _ in answers)
        assert statuses == [401] * PER_ADDRESS + [429] * 5
        refused, retry_after = await attempt(TOKENS["alice"].get_secret_value())
    assert refused == 429
    assert retry_after is not None
    assert 0 < int(retry_after) <= WINDOW
    assert (await client.get("/console/tenants", allow_redirects=False)).status == 303
    logged = caplog.text
    assert "qf-admin-guess" not in logged
    assert TOKENS["alice"].get_secret_value() not in logged
    assert "console sign-in throttled" in logged


def test_the_throttle_limits_each_address_and_everyone_and_forgets_with_time() -> None:
    now = [1000.0]
    throttle = SignInThrottle(
        per_address=2, global_limit=5, window=60.0, max_addresses=3, clock=lambda: now[0]
    )
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 60.0
    assert throttle.retry_after("b") == 0.0
    for address in ("b", "c", "d"):  # five failures in all: everyone waits
        now[0] += 1.0
        throttle.failed(address)
    assert throttle.retry_after("e") == 57.0
    now[0] += 57.0  # the first two of "a" leave the window
    assert throttle.retry_after("e") == 0.0
    # Only max_addresses are remembered: "a" (least recently failing) was forgotten.
    assert throttle.retry_after("a") == 0.0
    now[0] += 60.0
    assert throttle.retry_after("d") == 0.0
