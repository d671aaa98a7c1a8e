"""The usage agent in a real `quotaflow worker` process: batches count once, aliases map,
quota updates coalesce, meter jobs carry one deterministic identifier per batch, and each
reaches Stripe (the stand-in) once. The worker fetches billing objects from the stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.testing.stripe_standin import StandinControl
from quotaflow.topics import ensure_topics
from streams.usage_agent import meter_identifier, meter_topic
from tables.quota import QuotaUpdate
from tables.tenant import PlanEntry
from tests.kafkautil import produce, read_all, wait_for_records
from tests.pipeline import PERIOD, StripeFeed, worker_env
from tests.processes import components, start
from tests.tables.factories import BASIC, customer, event, make_tenant, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def _usage(
    batch_id: str, items: list[tuple[str, int]]
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    value = {
        "batch_id": batch_id,
        "node_id": batch_id.rpartition(":")[0],
        "region": "eu",
        "tenant_id": "acme",
        "sent_at": time.time(),
        "received_at": time.time(),
        "items": [{"customer_id": c, "units": u} for c, u in items],
    }
    return b"acme", orjson.dumps(value), [("qf-schema", b"usage-batch/1")]


async def test_usage_batches_apply_once_through_aliases_and_emit_meter_jobs(
    settings_factory: Callable[..., Settings], tmp_path: Path, stripe_standin: StandinControl
) -> None:
    settings = settings_factory()
    await ensure_topics(settings)
    api_key = "sk_test_usage_worker"
    tenant = make_tenant(
        {"basic": PlanEntry(quota=1000, meter_event_name="api_calls")}, stripe_api_key=api_key
    )
    tenants_file = tmp_path / "tenants.json"
    tenants_file.write_bytes(dump_tenants([tenant]))
    feed = StripeFeed(stripe_standin, [tenant])
    t = settings.topics
    await produce(
        settings.kafka_bootstrap,
        t.stripe_events,
        feed.records(
            [
                (
                    "acme",
                    event("customer.created", customer("cus_1", metadata={"rating_id": "r-1"})),
                ),
                (
                    "acme",
                    event(
                        "customer.subscription.created",
                        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
                    ),
                ),
            ]
        ),
    )
    env = worker_env(settings, tenants_file, tmp_path / "w", stripe=stripe_standin)
    with components({}, tmp_path) as started:
        start(started, ["worker"], env, tmp_path)
        first = await wait_for_records(settings.kafka_bootstrap, t.quota_updates, 1)
        assert QuotaUpdate.from_json(first[-1].value).customer_id == "r-1"
        await produce(
            settings.kafka_bootstrap,
            t.usage_events,
            [
                _usage("node-1:1", [("r-1", 100)]),  # 10 %: below every threshold, no update
                _usage("node-1:2", [("r-1", 500)]),  # 60 %: crosses 50 %
                _usage("node-1:2", [("r-1", 500)]),  # the same batch re-sent by the edge
                _usage("node-1:3", [("r-1", 450)]),  # 105 %: exhausted
            ],
        )
        updates = await wait_for_records(settings.kafka_bootstrap, t.quota_updates, 3)
        # However many billing updates came first, wait for the last batch's.
        while not any(QuotaUpdate.from_json(r.value).used == 1050 for r in updates):
            updates = await wait_for_records(
                settings.kafka_bootstrap, t.quota_updates, len(updates) + 1
            )
        jobs = await wait_for_records(settings.kafka_bootstrap, meter_topic(settings), 3)
        sent = await asyncio.to_thread(_meter_events, stripe_standin, api_key, 3)

    quotas = [QuotaUpdate.from_json(r.value) for r in updates]
    usage_driven = [q for q in quotas if q.reason.kind == "usage"]
    assert [(q.used, q.status) for q in usage_driven] == [(600, "active"), (1050, "exhausted")], [
        (q.version, q.reason, q.limit, q.used, q.status) for q in quotas
    ]
    assert all(q.customer_id == "r-1" for q in quotas)
    assert [q.version for q in quotas] == sorted({q.version for q in quotas})
    identifiers = [orjson.loads(r.value)["identifier"] for r in jobs]
    assert identifiers == [
        meter_identifier("acme", "cus_1", "api_calls", f"node-1:{n}") for n in (1, 2, 3)
    ]
    assert [orjson.loads(r.value)["value"] for r in jobs] == [100, 500, 450]
    assert all(orjson.loads(r.value)["stripe_customer_id"] == "cus_1" for r in jobs)
    assert len(await read_all(settings.kafka_bootstrap, meter_topic(settings))) == 3
    # Stripe got each batch's meter event once, under the job's identifier.
    assert [e["identifier"] for e in sent] == identifiers
    assert [e["payload"] for e in sent] == [
        {"stripe_customer_id": "cus_1", "value": str(v)} for v in (100, 500, 450)
    ]
    assert {e["event_name"] for e in sent} == {"api_calls"}
    feed.assert_fetched("acme", 2)  # the customer and the subscription


def _meter_events(stripe: StandinControl, account: str, count: int) -> list[dict[str, Any]]:
    """The meter events Stripe recorded for `account`, once there are `count`."""
    deadline = time.monotonic() + 30
    while len(events := stripe.meter_events(account)) < count:
        assert time.monotonic() < deadline, f"meter events at Stripe: {events}"
        time.sleep(0.2)
    return events
