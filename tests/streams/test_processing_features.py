"""The usage processor per feature: one apply per customer and batch, a meter job per
meter with each feature's units, exactly once per batch whatever the redelivery."""

from __future__ import annotations

import orjson

from quotaflow.registry import StaticTenantRegistry
from streams.processing.effects import Effects, Record
from streams.processing.usage import UsageProcessor, meter_identifier
from tables.billing import QuotaPolicy, apply_event
from tables.billing_state import CustomerState
from tables.outcome import Source
from tables.tenant import MeteredFeature, PlanEntry
from tests.tables.factories import BASE_TIME, PRO, event, make_tenant, subscription

PERIOD = (BASE_TIME, BASE_TIME + 30 * 86400)
NOW = float(BASE_TIME + 1000)
TENANT = make_tenant(
    {
        "pro": PlanEntry(
            quota=1000,
            meter_event_name="api_calls",
            metered={
                "exports": MeteredFeature(quota=100, meter_event_name="exports"),
                "pages": MeteredFeature(quota=None, meter_event_name="exports"),
                "seats": MeteredFeature(quota=5),
            },
        )
    }
)


def _store() -> dict[bytes, bytes]:
    body = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(PRO, 1)], period=PERIOD),
    )
    out = apply_event(
        None, body, tenant=TENANT, fetched=None, source=Source(0, 0), now=NOW, policy=QuotaPolicy()
    )
    assert out.state is not None
    return {b"acme/cus_1": out.state.model_dump_json().encode()}


def _usage(offset: int, batch: str, items: list[dict[str, object]]) -> Record:
    doc = {
        "batch_id": batch,
        "node_id": batch.split(":")[0],
        "region": "eu",
        "tenant_id": "acme",
        "sent_at": NOW,
        "received_at": NOW,
        "items": items,
    }
    return Record("usage.events", 0, offset, b"acme", orjson.dumps(doc))


def _save(store: dict[bytes, bytes], effects: Effects) -> CustomerState:
    for key, (_, value) in effects.states.items():
        store[key] = value
    return CustomerState.model_validate_json(store[b"acme/cus_1"])


ITEMS: list[dict[str, object]] = [
    {"customer_id": "cus_1", "units": 7},
    {"customer_id": "cus_1", "units": 3, "feature": "exports"},
    {"customer_id": "rating-1", "units": 2, "feature": "pages"},  # an alias of cus_1
    {"customer_id": "cus_1", "units": 1, "feature": "seats"},
]


def test_a_batch_counts_each_feature_once_and_bills_each_meter_once() -> None:
    store = _store()
    processor = UsageProcessor(
        lambda: StaticTenantRegistry([TENANT]), QuotaPolicy(), (0.01,), lambda: NOW
    )
    aliases = {b"acme/rating-1": b"cus_1"}
    effects = processor.handle(store, aliases, [_usage(0, "n1:1", ITEMS)])
    state = _save(store, effects)
    assert (state.used, state.feature_used) == (7, {"exports": 3, "pages": 2, "seats": 1})
    jobs = {orjson.loads(j.value)["event_name"]: orjson.loads(j.value) for j in effects.meter_jobs}
    # exports and pages share one meter: one event with both, under one identifier.
    assert {name: job["value"] for name, job in jobs.items()} == {"api_calls": 7, "exports": 5}
    assert jobs["exports"]["identifier"] == meter_identifier("acme", "cus_1", "exports", "n1:1")
    update = next(u for _, u in effects.quota_updates())
    assert update.metered["exports"].remaining == 97

    # The same batch again (another record, an edge retry): nothing counts, no job.
    again = processor.handle(store, aliases, [_usage(1, "n1:1", ITEMS)])
    assert _save(store, again).feature_used == {"exports": 3, "pages": 2, "seats": 1}
    assert again.meter_jobs == []
    # The same record reprocessed (crash before the commit): same jobs again, same ids.
    replay = processor.handle(store, aliases, [_usage(0, "n1:1", ITEMS)])
    assert sorted(j.value for j in replay.meter_jobs) == sorted(j.value for j in effects.meter_jobs)
    assert _save(store, replay).feature_used["exports"] == 3
