"""`quota explain` replays usage per feature as the worker applies it: one apply per
customer and record, the default units and each named feature's together."""

from __future__ import annotations

import orjson

from quotaflow.commands.ops.explain import Replayer, _Input
from tables.billing import QuotaPolicy
from tables.tenant import MeteredFeature, PlanEntry
from tests.tables.factories import BASE_TIME, PRO, event, make_tenant, subscription

PERIOD = (BASE_TIME, BASE_TIME + 30 * 86400)


def test_a_records_feature_items_are_replayed_with_its_default_units() -> None:
    tenant = make_tenant(
        {"pro": PlanEntry(quota=100, metered={"exports": MeteredFeature(quota=10)})},
        alias_key=None,
    )
    replayer = Replayer(tenant, QuotaPolicy())
    sub = subscription("sub_1", "cus_1", "active", [(PRO, 1)], period=PERIOD)
    body = orjson.dumps(event("customer.subscription.created", sub))
    replayer.apply(_Input(BASE_TIME + 1, 0, 0, 0, "stripe.events", body, ()))
    usage = {
        "batch_id": "n1:1",
        "node_id": "n1",
        "region": "eu",
        "tenant_id": "acme",
        "sent_at": BASE_TIME + 2,
        "received_at": BASE_TIME + 2,
        "items": [
            {"customer_id": "cus_1", "units": 5},
            {"customer_id": "cus_1", "units": 4, "feature": "exports"},
        ],
    }
    steps = replayer.apply(_Input(BASE_TIME + 2, 1, 0, 0, "usage.events", orjson.dumps(usage), ()))
    assert [(c, s.type, s.outcome) for c, s in steps] == [("cus_1", "units=5 exports=4", "changed")]
    state = replayer.states["cus_1"]
    assert (state.used, state.feature_used) == (5, {"exports": 4})
    assert state.last is not None
    assert state.last.metered["exports"].remaining == 6
    assert steps[0][1].changes["metered"][1]["exports"]["used"] == 4
