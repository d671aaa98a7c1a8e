"""The worker's /healthz, /readyz and /metrics on a real worker process and broker (fetching
from the Stripe stand-in)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from quotaflow.commands.localkafka import free_port, port_open
from quotaflow.envelope import Envelope
from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.testing.stripe_standin import StandinControl
from quotaflow.topics import ensure_topics
from streams.worker_web import MAX_REASONS, WorkerMetrics
from tables.tenant import Tenant
from tests.kafkautil import produce, wait_for_records
from tests.pipeline import PERIOD, StripeFeed, worker_env
from tests.tables.factories import BASIC, UNKNOWN, event, make_tenant, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with asyncio.timeout(10), session.get(url) as response:
        return response.status, await response.text()


async def test_worker_web_answers_health_readiness_and_counts_outcomes(
    settings_factory: Callable[..., Settings], tmp_path: Path, stripe_standin: StandinControl
) -> None:
    settings = settings_factory(partitions=1)
    await ensure_topics(settings)
    tenants_file = tmp_path / "tenants.json"
    tenant = make_tenant(stripe_api_key="sk_test_worker_web")
    tenants_file.write_bytes(dump_tenants([tenant]))
    feed = StripeFeed(stripe_standin, [tenant])
    created = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
    )
    unknown = event(
        "customer.subscription.created",
        subscription("sub_2", "cus_2", "active", [(UNKNOWN, 1)], period=PERIOD),
    )
    bad = (b"acme", b"{nope", Envelope("acme", "evt_x", "x", False, time.time(), "s1").headers())
    records = [*feed.records([("acme", created), ("acme", created), ("acme", unknown)]), bad]
    await produce(settings.kafka_bootstrap, settings.topics.stripe_events, records)

    port = free_port()
    log = (tmp_path / "worker.log").open("wb")
    env = {
        **os.environ,
        **worker_env(settings, tenants_file, tmp_path / "w", stripe=stripe_standin),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.ops.worker_web_main",
        str(port),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(60):
            while not port_open(port):
                assert proc.returncode is None, (tmp_path / "worker.log").read_text()[-3000:]
                await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session:
            assert (await _get(session, f"{base}/healthz"))[0] == 200
            async with asyncio.timeout(60):
                while (await _get(session, f"{base}/readyz"))[0] != 200:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
            await wait_for_records(settings.kafka_bootstrap, settings.topics.deadletter, 2)
            await wait_for_records(settings.kafka_bootstrap, settings.topics.quota_updates, 2)
            async with asyncio.timeout(60):
                while True:
                    status, text = await _get(session, f"{base}/metrics")
                    samples = _samples(text)
                    events = sum(
                        v for (n, _), v in samples.items() if n == "quotaflow_worker_events_total"
                    )
                    lagging = [k for k in samples if k[0] == "quotaflow_consumer_lag"]
                    if events >= len(records) and lagging:
                        break
                    await asyncio.sleep(0.2)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 10)
        log.close()

    assert status == 200
    outcome = "quotaflow_worker_events_total"
    assert samples[(outcome, (("outcome", "quota_updated"),))] == 1  # cus_1
    assert samples[(outcome, (("outcome", "unchanged"),))] == 1  # the redelivery
    # A dead letter wins over the update it came with (cus_2), and the broken body.
    assert samples[(outcome, (("outcome", "dead_lettered"),))] == 2
    letters = "quotaflow_deadletters_total"
    assert samples[(letters, (("reason", "unknown_price"),))] == 1
    assert samples[(letters, (("reason", "malformed"),))] == 1
    assert samples[("quotaflow_worker_ready", ())] == 1
    fetched = ("quotaflow_stripe_requests_total", (("mode", "test"), ("outcome", "ok")))
    assert samples[fetched] >= 2  # sub_1 and sub_2
    lag = [k for k in samples if k[0] == "quotaflow_consumer_lag"]
    assert lag
    assert all(dict(labels)["group"] == settings.app_id for _, labels in lag)
    assert any(name.startswith("faust_") for name, _ in samples)
    assert ("process_resident_memory_bytes", ()) in samples
    assert "acme" not in text
    assert "cus_1" not in text


async def test_stripe_calls_are_counted_by_mode_and_outcome(stripe_mock: str) -> None:
    metrics = WorkerMetrics()
    settings = Settings(stripe_api_base=stripe_mock, stripe_fetch=True)
    reader = metrics.stripe_reader(settings)
    assert reader is not None
    tenant: Tenant = make_tenant().model_copy(update={"stripe_api_key": SecretStr("sk_test_1")})
    try:
        assert await reader.fetch(tenant, "subscription", "sub_123") is not None
    finally:
        await reader.close()
    value = metrics.registry.get_sample_value(
        "quotaflow_stripe_requests_total", {"mode": "test", "outcome": "ok"}
    )
    assert value == 1
    assert WorkerMetrics().stripe_reader(Settings(stripe_fetch=False)) is None


def test_dead_letter_reasons_are_bounded_labels() -> None:
    metrics = WorkerMetrics()
    assert metrics.reason(b"unknown_price") == "unknown_price"
    assert metrics.reason("Not A Code!") == "other"
    assert metrics.reason(None) == "other"
    for n in range(MAX_REASONS + 5):
        metrics.reason(f"reason_{n}")
    assert metrics.reason("brand_new") == "other"
