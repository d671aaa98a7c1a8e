"""Cross-tenant: a webhook signed for tenant A on tenant B's route, and a push signed with
region A's key at region B's edge, are refused and change nothing. A webhook signed by
A that names B's customer is A's business only: it lands in A's namespace, never in B's.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from quotaflow.testing.harness import eventually
from tests.reliability.conftest import StackFactory
from tests.reliability.fuzz import Attack, push_signature, request, send_raw
from tests.reliability.model import PERIOD, WINDOW, WINDOW_START, Delivery, build
from tests.reliability.sender import StripeLikeSender, stripe_signature
from tests.tables.factories import PRO, event, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


def _takeover(victim: str, n: int, i: int) -> bytes:
    """An event that would raise B's customer n to 99 x pro, newer than anything B has."""
    cus, sub = f"cus_{victim}_{n}", f"sub_{victim}_{n}"
    obj = subscription(sub, cus, "active", [(PRO, 99)], period=PERIOD)
    created = WINDOW_START + WINDOW + 100 + i
    body = event("customer.subscription.updated", obj, created=created, event_id=f"evt_x_{i}")
    return orjson.dumps(body)


async def test_credentials_of_one_tenant_or_region_change_nothing_of_another(
    make_stack: StackFactory, figures: dict[str, Any]
) -> None:
    workload = build(
        ["acme", "globex"], 10, seed=31, tenant_regions={"acme": ("eu",), "globex": ("us",)}
    )
    stack = make_stack(workload, {"eu": 1, "us": 1})
    await stack.start_all()
    await StripeLikeSender(stack.ingress_url, workload.secrets).send_all(
        workload.deliveries(), rate=200
    )
    before = await stack.converge()
    statuses: dict[str, list[int]] = {}
    i = 0
    for attacker, victim in (("acme", "globex"), ("globex", "acme")):
        for n in range(10):
            i += 1
            body = _takeover(victim, n, i)
            headers = [
                (b"Content-Type", b"application/json"),
                (b"Stripe-Signature", stripe_signature(body, workload.secrets[attacker]).encode()),
            ]
            raw = request("POST", f"/v1/webhooks/stripe/{victim}", headers, body)
            status = await send_raw(stack.ingress_port, Attack("cross_route", raw))
            statuses.setdefault("webhook signed by A on B's route", []).append(status)
    # A's own route, A's signature, B's customer ids: accepted, but only ever A's data. The
    # worker reads them from A's Stripe account, which holds such objects of its own.
    for n in range(10):
        stack.feed.change("acme", orjson.loads(_takeover("globex", n, 0))["data"]["object"])
    own = [
        Delivery(
            "acme",
            f"evt_own_{n}",
            _takeover("globex", n, 100 + n).replace(b'"evt_x_', b'"evt_own_x_'),
        )
        for n in range(10)
    ]
    report = await StripeLikeSender(stack.ingress_url, workload.secrets).send_all(own, rate=100)
    statuses["B's customer ids on A's own route"] = sorted(report.statuses.elements())
    for signer, target in (("eu", "us"), ("us", "eu")):
        port = stack.edge_ports[target][0]
        for n in range(10):
            victim = "globex" if target == "us" else "acme"
            update = {
                "tenant_id": victim,
                "customer_id": f"cus_{victim}_{n}",
                "limit": 10**9,
                "used": 0,
                "remaining": 10**9,
                "status": "active",
                "version": 10**6,
                "reason": {"kind": "policy", "id": "x"},
                "updated_at": time.time(),
            }
            for region in (signer, target):  # the body may even claim the target's region
                body = orjson.dumps(
                    {
                        "region": region,
                        "push_id": f"x{n}{region}",
                        "updates": [update],
                        "snapshot": None,
                    }
                )
                sig = push_signature(stack.push_keys[signer], body)
                raw = request("POST", "/v1/push", [(b"X-Quotaflow-Signature", sig)], body)
                status = await send_raw(port, Attack("cross_region", raw))
                statuses.setdefault("push signed with A's key at B's edge", []).append(status)

    assert set(statuses["webhook signed by A on B's route"]) == {400}
    assert set(statuses["push signed with A's key at B's edge"]) == {401}
    assert set(statuses["B's customer ids on A's own route"]) == {200}
    # The accepted own-route events flow through before the other quotas are compared.
    acme_edge = stack.edge_ports["eu"][0]
    taken = [("acme", f"cus_globex_{n}") for n in range(10)]

    async def all_landed() -> bool:
        return None not in (await stack.edge_view(acme_edge, taken)).values()

    await eventually(all_landed, timeout=90, what="A's own-route events reach A's edge")
    after = await stack.converge()
    assert after == before, "another tenant's or region's quotas changed"
    landed = await stack.edge_view(acme_edge, [("acme", "cus_globex_0")])
    assert landed[("acme", "cus_globex_0")] is not None  # A's namespace, A's business
    figures.update({k: dict.fromkeys(map(str, v), len(v)) for k, v in statuses.items()})
