"""The billing worker reads Stripe concurrently and keeps tenants apart: a real
`quotaflow worker` process, the real broker, and the Stripe stand-in, which counts the
reads in flight and holds one tenant's reads until told otherwise. No timing threshold:
each assertion is about what happened while a read was held."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.testing.stripe_standin import StandinControl, run_standin
from quotaflow.topics import ensure_topics
from tables.quota import QuotaUpdate
from tests.kafkautil import produce, read_all
from tests.pipeline import PERIOD, stripe_record, worker_env
from tests.processes import components, start
from tests.tables.factories import BASIC, event, make_tenant, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

SLOW, FAST = "slowco", "fastco"


async def _until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            got = check()
            if got:
                return got
            await asyncio.sleep(0.1)
    raise AssertionError(what)  # pragma: no cover - the timeout raises first


async def _quotas(
    settings: Settings, enough: Callable[[dict[str, QuotaUpdate]], bool]
) -> dict[str, QuotaUpdate]:
    """The latest quota per key, read again until `enough` says so (60 s at most)."""
    out: dict[str, QuotaUpdate] = {}
    for _ in range(600):
        for record in await read_all(settings.kafka_bootstrap, settings.topics.quota_updates):
            update = QuotaUpdate.from_json(record.value)
            out[update.key] = update
        if enough(out):
            break
        await asyncio.sleep(0.1)
    return out


async def test_reads_run_concurrently_and_a_held_tenant_does_not_block_another(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(partitions=1)  # both tenants share the one partition
    await ensure_topics(settings)
    tenants = [
        make_tenant(tenant_id=t).model_copy(update={"stripe_api_key": SecretStr(f"sk_test_{t}")})
        for t in (SLOW, FAST)
    ]
    (tmp_path / "tenants.json").write_bytes(dump_tenants(tenants))
    with run_standin() as url:
        stripe = StandinControl(url)
        stripe.hold(f"sk_test_{SLOW}")
        slow_events = []
        for n in range(12):
            sub = subscription(f"sub_s{n}", f"cus_s{n}", "active", [(BASIC, 1)], period=PERIOD)
            stripe.put(f"sk_test_{SLOW}", sub)
            slow_events.append(stripe_record(SLOW, event("customer.subscription.created", sub)))
        fast_sub = subscription("sub_f", "cus_f", "active", [(BASIC, 2)], period=PERIOD)
        stripe.put(f"sk_test_{FAST}", fast_sub)
        fast = stripe_record(FAST, event("customer.subscription.created", fast_sub))
        # The slow tenant's events come first in the partition.
        await produce(settings.kafka_bootstrap, settings.topics.stripe_events, [*slow_events, fast])

        env = worker_env(
            settings,
            tmp_path / "tenants.json",
            tmp_path / "w",
            stripe=url,
        )
        with components({}, tmp_path) as started:
            start(started, ["worker"], env, tmp_path)
            # Every read of the held tenant is in flight at once (not one after another).
            await _until(
                "the slow tenant's reads were not all in flight at once",
                lambda: stripe.account_stats(f"sk_test_{SLOW}")["in_flight"] == 12,
            )
            # The other tenant's event, behind them in the partition, is applied meanwhile.
            quotas = await _quotas(settings, lambda q: f"{FAST}/cus_f" in q)
            assert quotas[f"{FAST}/cus_f"].limit == 2000
            assert not any(key.startswith(f"{SLOW}/") for key in quotas)
            assert stripe.account_stats(f"sk_test_{SLOW}")["in_flight"] == 12
            stripe.release(f"sk_test_{SLOW}")
            quotas = await _quotas(
                settings, lambda q: sum(key.startswith(f"{SLOW}/") for key in q) == 12
            )
        assert {quotas[f"{SLOW}/cus_s{n}"].limit for n in range(12)} == {1000}
        assert stripe.stats()["max_in_flight"] >= 12


async def test_a_tenant_whose_stripe_stays_down_falls_back_to_snapshots_and_shows_in_readyz(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    import aiohttp

    from quotaflow.commands.localkafka import free_port

    settings = settings_factory(partitions=1)
    await ensure_topics(settings)
    tenant = make_tenant(tenant_id=SLOW).model_copy(
        update={"stripe_api_key": SecretStr(f"sk_test_{SLOW}")}
    )
    (tmp_path / "tenants.json").write_bytes(dump_tenants([tenant]))
    port = free_port()
    with run_standin() as url:
        stripe = StandinControl(url)
        stripe.configure(f"sk_test_{SLOW}", down="error")
        sub = subscription("sub_d", "cus_d", "active", [(BASIC, 3)], period=PERIOD)
        stripe.put(f"sk_test_{SLOW}", sub)
        down = stripe_record(SLOW, event("customer.subscription.created", sub))
        await produce(settings.kafka_bootstrap, settings.topics.stripe_events, [down])
        env = worker_env(
            settings,
            tmp_path / "tenants.json",
            tmp_path / "w",
            stripe=url,
            stripe_fallback_after="2",
        )
        with components({}, tmp_path) as started:
            start(started, ["worker", "--web-port", str(port)], env, tmp_path)
            quotas = await _quotas(settings, bool)
            # Applied from the event's own snapshot once Stripe stayed down past the deadline.
            assert quotas[f"{SLOW}/cus_d"].limit == 3000
            assert stripe.account_stats(f"sk_test_{SLOW}")["requests"]["subscription"] > 1
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    ready = await response.json()
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    metrics = await response.text()
        assert ready["stripe"]["degraded_tenants"] == {"count": 1, "ids": [SLOW]}
        assert 'quotaflow_stripe_tenants{state="degraded"} 1.0' in metrics
        assert "quotaflow_stripe_fallbacks 1.0" in metrics
