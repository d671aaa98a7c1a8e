"""Secret scan: after a full scenario on a broker of its own (tenants onboarded into the
encrypted `tenants` topic, webhooks, hostile requests, a pusher SIGKILL, cross-region
pushes), every byte of every topic on the broker, every log file of every process and
every /metrics page is searched for each tenant webhook secret, Stripe API key, push key
and key-encryption key in plaintext. None may appear.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import sys
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from quotaflow.commands.localkafka import LocalKafka, free_port
from quotaflow.registry import dump_tenants
from quotaflow.topics import ensure_topics
from tests.conftest import TENANT_SIGNING_KEY, tenant_verify_env
from tests.processes import EDGE_TOKEN
from tests.reliability.conftest import StackFactory
from tests.reliability.fuzz import PushFuzzer, WebhookFuzzer, send_raw
from tests.reliability.model import build
from tests.reliability.sender import StripeLikeSender
from tests.reliability.stack import Stack, topic_records

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


def _onboard(stack: Stack, env: dict[str, str]) -> None:
    """`quotaflow tenants add --file` for each tenant: the registry is the encrypted topic."""
    for doc in orjson.loads(dump_tenants(stack.workload.tenants)):
        path = stack.tmp / f"onboard-{doc['id']}.json"
        path.write_bytes(orjson.dumps(doc))
        done = subprocess.run(
            [sys.executable, "-m", "quotaflow.commands.cli", "tenants", "add", "--file", str(path)],
            # The admin tools alone hold the tenants signing key; the components only verify.
            env={**os.environ, **env, "QUOTAFLOW_TENANT_SIGNING_KEYS": f'["{TENANT_SIGNING_KEY}"]'},
            capture_output=True,
            timeout=60,
            check=False,
        )
        (stack.tmp / f"tenants-add-{doc['id']}.log").write_bytes(done.stdout + done.stderr)
        assert done.returncode == 0, done.stderr[-2000:]
        path.unlink()  # the plaintext input file is the operator's, not a component's


async def _all_topic_bytes(bootstrap: str) -> dict[str, bytes]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = await admin.list_topics()
    finally:
        await admin.close()
    out: dict[str, bytes] = {}
    for name in sorted(names):
        chunks: list[bytes] = []
        for r in await topic_records(bootstrap, name):
            chunks += [r.key or b"", r.value or b""]
            chunks += [k.encode() + b"=" + (v or b"") for k, v in r.headers]
        out[name] = b"\n".join(chunks)
    return out


async def _metrics(urls: list[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for url in urls:
            async with http.get(url) as resp:
                assert resp.status == 200, url
                out[url] = await resp.read()
    return out


async def test_no_secret_in_any_topic_log_or_metric(
    own_broker: LocalKafka, make_stack: StackFactory, figures: dict[str, Any]
) -> None:
    workload = build(
        ["acme", "globex"], 10, seed=37, tenant_regions={"acme": ("eu",), "globex": ("eu", "us")}
    )
    keyring = {"k1": base64.b64encode(os.urandom(32)).decode()}
    stack = make_stack(
        workload,
        {"eu": 2, "us": 1},
        kafka_bootstrap=own_broker.bootstrap,
        env={
            "QUOTAFLOW_TENANTS_FILE": "",
            "QUOTAFLOW_KEYRING": orjson.dumps(keyring).decode(),
            "QUOTAFLOW_INGRESS_BODY_READ_TIMEOUT": "1",
            **tenant_verify_env(),
        },
    )
    await ensure_topics(stack.settings)
    await asyncio.to_thread(_onboard, stack, stack.env)
    worker_port = free_port()
    await stack.start_all(worker_web_port=worker_port)
    sender = StripeLikeSender(stack.ingress_url, workload.secrets)
    await sender.send_all(workload.deliveries(copies=2, rng=random.Random(1)), rate=150)
    rng = random.Random(99)
    hooks = WebhookFuzzer(rng, "acme", workload.secrets["acme"], workload.secrets["globex"])
    pushes = PushFuzzer(rng, "us", stack.push_keys["eu"], ("globex", "cus_globex_0"))
    for _ in range(300):
        await send_raw(stack.ingress_port, hooks.next())
        await send_raw(stack.edge_ports["us"][0], pushes.next())
    await asyncio.to_thread(stack.procs["push-eu"].kill)
    await asyncio.to_thread(stack.start_pusher, "eu")
    await stack.converge()

    secrets: dict[str, bytes] = {"tenants signing key": TENANT_SIGNING_KEY.encode()}
    for tenant in workload.tenants:
        for s in tenant.webhook_secrets:
            value = s.secret.get_secret_value()
            secrets[f"{tenant.id} webhook secret"] = value.encode()
            secrets[f"{tenant.id} webhook secret body"] = value.removeprefix("whsec_").encode()
        assert tenant.stripe_api_key is not None
        secrets[f"{tenant.id} stripe key"] = tenant.stripe_api_key.get_secret_value().encode()
    for region, key in stack.push_keys.items():
        secrets[f"{region} push key"] = key.encode()
        secrets[f"{region} push key raw"] = base64.b64decode(key)
    for region, key in stack.edge_keys.items():
        secrets[f"{region} edge key"] = key.encode()
        secrets[f"{region} edge key raw"] = base64.b64decode(key)
    secrets["edge application token"] = EDGE_TOKEN.encode()  # sent by converge()'s reads
    for kid, kek in keyring.items():
        secrets[f"kek {kid}"] = kek.encode()
        secrets[f"kek {kid} raw"] = base64.b64decode(kek)

    topics = await _all_topic_bytes(own_broker.bootstrap)
    ports = [stack.ingress_port, *(p for ps in stack.edge_ports.values() for p in ps)]
    metric_urls = [f"http://127.0.0.1:{p}/metrics" for p in ports]
    metric_urls.append(f"http://127.0.0.1:{worker_port}/metrics")
    metrics = await _metrics(metric_urls)
    logs = {str(p): p.read_bytes() for p in stack.logs()}
    logs[str(own_broker.log_file)] = own_broker.log_file.read_bytes()
    places = {**{f"topic {k}": v for k, v in topics.items()}, **metrics, **logs}
    found = [
        f"{what} in {where}"
        for where, data in places.items()
        for what, secret in secrets.items()
        if secret in data
    ]
    assert not found, found
    assert any(name.endswith("tenants") for name in topics), "no tenants topic was scanned"
    figures.update(
        topics=len(topics),
        topic_bytes=sum(len(v) for v in topics.values()),
        log_files=len(logs),
        log_bytes=sum(len(v) for v in logs.values()),
        metrics_pages=len(metrics),
        secrets_searched=len(secrets),
    )
