"""The console end to end in headless Chromium, against the real pipeline: the broker,
`quotaflow ingress`, `worker`, `push --region eu|us`, `edge` and `admin` as processes, the
worker fetching from the Stripe stand-in, tenants on the encrypted `tenants` topic.

An operator signs in, onboards a tenant through the form, the tenant's Stripe sends it a
signed webhook (and one naming a price its catalog lacks), its customer consumes at the
edge; the operator finds the customer (published quota beside each edge node's, the explain
timeline, the usage chart), re-drives the dead letter after a dry run, reads the pipeline,
and suspends the tenant (a confirm dialog: the page's script). Each page is photographed
(`browser.SCREENSHOTS_DIR`; README shows the copies in docs/console/).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from quotaflow.commands.localkafka import free_port
from quotaflow.commands.ops import deadletter as dl
from quotaflow.commands.ops.quota_show import current_quotas
from quotaflow.commands.tenants.writer import open_writer
from quotaflow.settings import Settings
from quotaflow.tenants.keyring import LocalKeyring
from quotaflow.testing.stripe_standin import StandinControl
from quotaflow.topics import ensure_topics
from streams.deadletter import REDRIVE
from tests.conftest import TENANT_SIGNING_KEY, tenant_verify_env
from tests.console.browser import screenshot, start_chromium
from tests.kafkautil import read_all
from tests.processes import EDGE_AUTH, EDGE_TOKEN, components, edge_auth_env, start
from tests.tables.factories import BASIC, UNKNOWN, event, subscription
from wire import generate_keypair, public_key_of

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(420)]

ADMIN_TOKEN = "qf-admin-ops-" + base64.urlsafe_b64encode(os.urandom(24)).decode()
NOW = int(time.time())
PERIOD = (NOW - 3 * 86_400, NOW + 27 * 86_400)
REGIONS = ("eu", "us")


@dataclass
class Pipeline:
    settings: Settings
    ingress: str
    admin: str
    edges: dict[str, str]  # region -> edge base URL
    stripe: StandinControl
    out: Path


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


@pytest.fixture
async def pipeline(
    settings_factory: Callable[..., Settings], stripe_standin: StandinControl, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    kek = os.urandom(32)
    settings = settings_factory(regions=list(REGIONS))
    await ensure_topics(settings)
    push_keys = {r: generate_keypair()[0] for r in REGIONS}
    edge_keys = {r: generate_keypair()[0] for r in REGIONS}
    edge_ports = {r: free_port() for r in REGIONS}
    ingress_port, admin_port = free_port(), free_port()
    pusher_ports = {r: free_port() for r in REGIONS}
    ingress = f"http://127.0.0.1:{ingress_port}"
    base = {
        "QUOTAFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "QUOTAFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "QUOTAFLOW_PARTITIONS": str(settings.partitions),
        "QUOTAFLOW_APP_ID": settings.app_id,
        "QUOTAFLOW_REGIONS": _json(list(REGIONS)),
        "QUOTAFLOW_KEYRING": _json({"k1": base64.b64encode(kek).decode()}),
        "QUOTAFLOW_PUSH_VERIFY_KEYS": _json({r: [public_key_of(k)] for r, k in push_keys.items()}),
        "QUOTAFLOW_EDGE_VERIFY_KEYS": _json({r: [public_key_of(k)] for r, k in edge_keys.items()}),
        "QUOTAFLOW_EDGE_NODES": _json(
            {r: [f"http://127.0.0.1:{p}"] for r, p in edge_ports.items()}
        ),
        "QUOTAFLOW_EDGE_URL_ALLOW": _json({r: ["127.0.0.1/32"] for r in REGIONS}),
        "QUOTAFLOW_INGRESS_PORT": str(ingress_port),
        "QUOTAFLOW_USAGE_INGRESS_URL": ingress,
        "QUOTAFLOW_USAGE_THRESHOLDS": "[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]",
        "QUOTAFLOW_STRIPE_FETCH": "true",
        "QUOTAFLOW_STRIPE_API_BASE": stripe_standin.url,
        "QUOTAFLOW_STORE": "memory://",
        "QUOTAFLOW_DATA_DIR": str(tmp_path / "data"),
        **edge_auth_env(),
        **tenant_verify_env(),
    }
    admin_env = {
        **base,
        "QUOTAFLOW_ADMIN_PORT": str(admin_port),
        "QUOTAFLOW_ADMIN_TOKENS": _json({"ops": ADMIN_TOKEN}),
        "QUOTAFLOW_TENANT_SIGNING_KEYS": _json([TENANT_SIGNING_KEY]),
        "QUOTAFLOW_CONSOLE_EDGE_TOKEN": EDGE_TOKEN,
        "QUOTAFLOW_CONSOLE_INGRESS_METRICS": _json([f"{ingress}/metrics"]),
        "QUOTAFLOW_CONSOLE_PUSHER_METRICS": _json(
            [f"http://127.0.0.1:{p}/metrics" for p in pusher_ports.values()]
        ),
    }
    async with open_writer(settings, keyring=LocalKeyring({"k1": kek})) as writer:
        # Tenants onboarded earlier, so the list has neighbours.
        for tenant_id, name, regions in (
            ("acme", "Acme Rating", ["eu", "us"]),
            ("initech", "Initech", ["us"]),
        ):
            await writer.add(
                {
                    "id": tenant_id,
                    "name": name,
                    "webhook_secrets": [{"id": "s1", "secret": f"whsec_{os.urandom(8).hex()}"}],
                    "stripe_api_key": f"rk_test_{tenant_id}_{os.urandom(4).hex()}",
                    "regions": regions,
                    "plans": {"basic": {"quota": 1000}, "pro": {"quota": 50_000}},
                },
                actor="test",
            )
    with components(base, tmp_path) as started:
        ingress_proc = start(started, ["ingress", "--workers", "1"], base, tmp_path)
        start(started, ["worker"], base, tmp_path)
        without_keyring = {k: v for k, v in base.items() if k != "QUOTAFLOW_KEYRING"}
        for region in REGIONS:
            signing = _json({region: [push_keys[region]]})
            env = {
                **without_keyring,
                "QUOTAFLOW_PUSH_SIGNING_KEYS": signing,
                "QUOTAFLOW_PUSHER_PORT": str(pusher_ports[region]),
            }
            start(started, ["push", "--region", region], env, tmp_path)
        for region, port in edge_ports.items():
            env = {**base, "QUOTAFLOW_EDGE_SIGNING_KEYS": _json([edge_keys[region]])}
            edge = start(started, ["edge", "--region", region, "--port", str(port)], env, tmp_path)
            edge.wait_port(port)
        admin = start(started, ["admin"], admin_env, tmp_path)
        ingress_proc.wait_port(ingress_port)
        admin.wait_port(admin_port)
        yield Pipeline(
            settings,
            ingress,
            f"http://127.0.0.1:{admin_port}",
            {r: f"http://127.0.0.1:{p}" for r, p in edge_ports.items()},
            stripe_standin,
            tmp_path / "screenshots",
        )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    driver = start_chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


def stripe_signature(secret: str, body: bytes) -> str:
    """Stripe's documented scheme: HMAC-SHA256 of `{t}.{body}` under the endpoint secret."""
    t = int(time.time())
    v1 = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={v1}"


async def send_webhook(
    http: aiohttp.ClientSession, p: Pipeline, tenant: str, secret: str, body: bytes
) -> None:
    """Delivers until the ingress acknowledges (it learns a new tenant within a second)."""
    deadline = time.monotonic() + 30
    while True:
        headers = {"Stripe-Signature": stripe_signature(secret, body)}
        headers["Content-Type"] = "application/json"
        async with http.post(
            f"{p.ingress}/v1/webhooks/stripe/{tenant}", data=body, headers=headers
        ) as response:
            if response.status == 200:
                return
            text = await response.text()
        assert time.monotonic() < deadline, f"ingress kept answering {response.status}: {text}"
        await asyncio.sleep(0.3)


async def until(check: Callable[[], object], what: str, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.3)


def wait_for(driver: webdriver.Chrome, css: str, within: float = 60.0) -> None:
    """Waits for `css` on the page; a timeout says where the browser is and what it shows."""
    try:
        WebDriverWait(driver, within).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
        )
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "body").text[:1500]
        pytest.fail(f"no {css} within {within}s at {driver.current_url}:\n{page}")


def text_of(driver: webdriver.Chrome, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


async def in_thread(fn: Callable[[], object]) -> None:
    """Selenium blocks: its calls run off the loop the stack's checks share."""
    await asyncio.to_thread(fn)


async def test_an_operator_runs_the_pipeline_from_the_console(
    pipeline: Pipeline, browser: webdriver.Chrome
) -> None:
    p, d = pipeline, browser
    secret = "whsec_globex_" + os.urandom(12).hex()
    api_key = "rk_test_globex_" + os.urandom(8).hex()

    # Sign in: the console sends the browser to its login form first.
    await in_thread(lambda: d.get(f"{p.admin}/console/tenants"))
    wait_for(d, "#token")
    screenshot(d, p.out, "01-login")
    d.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    d.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(d, "#tenants")
    assert text_of(d, "#operator") == "ops"
    cookie = d.get_cookie("qf_console")
    assert cookie is not None
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"

    # Onboard a tenant through the form.
    d.find_element(By.ID, "onboard").click()
    wait_for(d, "#onboard-form")
    for name, value in {
        "id": "globex",
        "name": "Globex Metering",
        "stripe_api_key": api_key,
        "webhook_secret": secret,
        "plans": "basic=1000\npro=50000",
    }.items():
        d.find_element(By.NAME, name).send_keys(value)
    d.find_element(By.CSS_SELECTOR, "input[name=regions][value=eu]").click()
    d.find_element(By.CSS_SELECTOR, "input[name=regions][value=us]").click()
    d.find_element(By.ID, "create").click()
    wait_for(d, "#done")
    assert "onboarded" in text_of(d, "#done")
    assert secret not in d.page_source
    assert api_key not in d.page_source

    # Its Stripe account: the subscription changes, then the signed webhooks arrive.
    good = subscription("sub_good", "cus_1", "active", [(BASIC, 1)], period=PERIOD)
    odd = subscription("sub_odd", "cus_2", "active", [(UNKNOWN, 1)], period=PERIOD)
    p.stripe.put(api_key, good, odd)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for sub in (good, odd):
            body = orjson.dumps(event("customer.subscription.created", sub, created=NOW))
            await send_webhook(http, p, "globex", secret, body)

        async def served(region: str) -> bool:
            url = f"{p.edges[region]}/v1/quotas/globex/cus_1"
            async with http.get(url, headers=EDGE_AUTH) as response:
                return response.status == 200 and (await response.json())["limit"] == 1000

        for region in REGIONS:
            await until(functools.partial(served, region), f"cus_1 at the {region} edge")

        # The customer calls the API: the edge counts, reports, the worker publishes.
        for _ in range(3):
            async with http.post(
                f"{p.edges['eu']}/v1/consume",
                json={"tenant_id": "globex", "customer_id": "cus_1", "cost": 150},
                headers=EDGE_AUTH,
            ) as response:
                assert (await response.json())["allowed"]
            await asyncio.sleep(1.5)

        async def used() -> bool:
            quotas = await current_quotas(p.settings, "globex", "cus_1")
            return quotas["globex/cus_1"].used >= 450 if quotas else False

        await until(used, "the usage published")

        # Without a session, or without the CSRF token, a change does nothing.
        async with http.post(
            f"{p.admin}/console/tenants/globex/suspend", allow_redirects=False
        ) as response:
            assert response.status == 401

    await in_thread(lambda: d.get(f"{p.admin}/console/tenants"))
    wait_for(d, "#tenants")
    assert "globex" in text_of(d, "#tenants")
    screenshot(d, p.out, "02-tenants")
    await in_thread(lambda: d.get(f"{p.admin}/console/tenants/globex"))
    wait_for(d, "#plans")
    assert "customer.subscription.created" in text_of(d, "#last-event")
    screenshot(d, p.out, "03-tenant")

    # Find the customer: published quota, each region's edge node, the explain timeline.
    d.find_element(By.LINK_TEXT, "Customer").click()
    wait_for(d, "#lookup")
    d.find_element(By.ID, "lookup-tenant").send_keys("globex")
    d.find_element(By.ID, "lookup-customer").send_keys("cus_1")
    d.find_element(By.CSS_SELECTOR, "#lookup button").click()
    wait_for(d, "#timeline")
    quotas = text_of(d, "#quotas")
    for region in REGIONS:
        assert f"{region} · {p.edges[region]}" in quotas
    assert quotas.count("1000") >= 3  # published, eu, us
    timeline = text_of(d, "#timeline")
    assert "customer.subscription.created" in timeline
    assert "limit None → 1000" in timeline
    assert "usage" in timeline
    assert d.find_element(By.ID, "usage-chart").get_attribute("naturalWidth") != "0"
    screenshot(d, p.out, "04-customer")

    # The event naming a price the catalog lacks became a dead letter: re-drive it.
    async def dead_letter() -> bool:
        return bool(await dl.read_letters(p.settings, dl.Selection(tenant="globex")))

    await until(dead_letter, "the unknown price's dead letter")
    (letter,) = await dl.read_letters(p.settings, dl.Selection(tenant="globex"))
    await in_thread(lambda: d.get(f"{p.admin}/console/deadletters?tenant=globex"))
    wait_for(d, "#letters")
    assert "unknown_price" in text_of(d, "#letters")
    screenshot(d, p.out, "05-deadletters")
    d.find_element(By.CSS_SELECTOR, f"input[name=ref][value='{letter.ref}']").click()
    d.find_element(By.ID, "dry-run").click()
    wait_for(d, "#dry-run-result")
    assert "Would re-drive 1 of 1" in text_of(d, "#dry-run-result")
    screenshot(d, p.out, "06-redrive-dry-run")
    d.find_element(By.ID, "redrive").click()
    wait_for(d, "#redrive-result")
    assert "Re-drove 1 of 1" in text_of(d, "#redrive-result")
    records = await read_all(p.settings.kafka_bootstrap, p.settings.topics.stripe_events)
    redriven = [r for r in records if (REDRIVE, letter.ref.encode()) in list(r.headers)]
    assert len(redriven) == 1
    assert redriven[0].value == letter.value

    # The pipeline: lag, the edge nodes' announcements, the ingress outcomes.
    d.find_element(By.LINK_TEXT, "Pipeline").click()
    wait_for(d, "#outcomes")
    outcomes = text_of(d, "#outcomes")
    assert "accepted" in outcomes
    assert "tenant accepted published 2" in outcomes  # the two webhooks
    assert "verified" in d.page_source
    assert p.settings.app_id in text_of(d, "#lag-totals")
    # Push latency from the real pushers' /metrics: the quota pushes above were measured,
    # and each configured node shows it is up with its successful batches.
    latency = text_of(d, "#push-latency-eu")
    assert re.fullmatch(r"push latency p50 [\d.]+ ms · p99 [\d.]+ ms \(\d+ pushes\)", latency)
    assert int(re.findall(r"\((\d+) pushes", latency)[0]) >= 1
    pushes = [e.text for e in d.find_elements(By.CSS_SELECTOR, "td.push")]
    assert pushes
    assert any(re.match(r"up ok [1-9]", text) for text in pushes), pushes
    screenshot(d, p.out, "07-pipeline")

    # Suspend through the tenant page: the page's script asks first.
    await in_thread(lambda: d.get(f"{p.admin}/console/tenants/globex"))
    wait_for(d, "#suspend")
    d.find_element(By.ID, "suspend").click()
    WebDriverWait(d, 10).until(expected_conditions.alert_is_present())
    d.switch_to.alert.accept()
    wait_for(d, "#done")
    assert text_of(d, "#status") == "suspended"
