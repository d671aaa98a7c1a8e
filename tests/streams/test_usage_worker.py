"""The usage agent in a real `quotaflow worker` process: batches count once, aliases map,
quota updates coalesce, meter jobs carry one deterministic identifier per batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from streams.usage_agent import meter_identifier, meter_topic
from tables.quota import QuotaUpdate
from tables.tenant import PlanEntry
from tests.kafkautil import produce, read_all, wait_for_records
from tests.pipeline import PERIOD, stripe_record, worker_env
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
    settings_factory: Callable[..., Settings], tmp_path: Path, stripe_mock: str
) -> None:
    settings = settings_factory()
    await ensure_topics(settings)
    tenant = make_tenant({"basic": PlanEntry(quota=1000, meter_event_name="api_calls")}).model_copy(
        update={"stripe_api_key": SecretStr("sk_test_123")}
    )
    tenants_file = tmp_path / "tenants.json"
    tenants_file.write_bytes(dump_tenants([tenant]))
    t = settings.topics
    await produce(
        settings.kafka_bootstrap,
        t.stripe_events,
        [
            stripe_record(
                "acme", event("customer.created", customer("cus_1", metadata={"rating_id": "r-1"}))
            ),
            stripe_record(
                "acme",
                event(
                    "customer.subscription.created",
                    subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
                ),
            ),
        ],
    )
    env = {
        **worker_env(settings, tenants_file, tmp_path / "w", stripe=None),
        "QUOTAFLOW_STRIPE_API_BASE": stripe_mock,
    }
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
        jobs = await wait_for_records(settings.kafka_bootstrap, meter_topic(settings), 3)

    quotas = [QuotaUpdate.from_json(r.value) for r in updates]
    usage_driven = [q for q in quotas if q.reason.kind == "usage"]
    assert [(q.used, q.status) for q in usage_driven] == [(600, "active"), (1050, "exhausted")]
    assert all(q.customer_id == "r-1" for q in quotas)
    assert [q.version for q in quotas] == sorted({q.version for q in quotas})
    identifiers = [orjson.loads(r.value)["identifier"] for r in jobs]
    assert identifiers == [
        meter_identifier("acme", "cus_1", "api_calls", f"node-1:{n}") for n in (1, 2, 3)
    ]
    assert [orjson.loads(r.value)["value"] for r in jobs] == [100, 500, 450]
    assert all(orjson.loads(r.value)["stripe_customer_id"] == "cus_1" for r in jobs)
    assert len(await read_all(settings.kafka_bootstrap, meter_topic(settings))) == 3
