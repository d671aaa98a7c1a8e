"""The workload and its reference model: what every quota must be at the end.

Each customer gets a subscription lifecycle whose events carry their own snapshot,
created at distinct seconds spread over a 3-day window, plus paid top-up invoices for
some. A worker that fetches from Stripe (the stand-in) sees the subscription's state at
the time of the fetch; one with the fetch off applies the snapshots. The expected final
quota is computed here from the *last* Stripe object per customer and the plan catalog
alone, with none of the stream code: that is the oracle every fault scenario compares the
edges with.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tables.tenant import PlanEntry, Tenant, WebhookSecret
from tests.tables.factories import BASIC, PRO, TOPUP, Price, event, invoice, subscription

PERIOD = (1_767_225_600, 1_769_904_000)
WINDOW_START = PERIOD[0] + 86_400
WINDOW = 3 * 86_400  # Stripe retries for three days: deliveries spread over that window
QUOTA = {"basic": 1_000, "pro": 10_000}
TOPUP_UNITS = 500
CATALOG = {
    "basic": PlanEntry(quota=QUOTA["basic"]),
    "pro": PlanEntry(quota=QUOTA["pro"]),
    "prod_topup": PlanEntry(quota=TOPUP_UNITS, topup=True),
}
_COUNTING = frozenset({"active", "trialing"})
_PRICES = {"basic": BASIC, "pro": PRO}


@dataclass(frozen=True)
class Expected:
    """The quota fields an edge must show at the end."""

    limit: int
    used: int
    remaining: int
    status: str
    period_start: int
    period_end: int

    @classmethod
    def of_edge(cls, doc: dict[str, Any]) -> Expected:
        return cls(
            doc["limit"],
            doc["used"],
            doc["remaining"],
            doc["status"],
            doc["period_start"],
            doc["period_end"],
        )


@dataclass(frozen=True)
class Delivery:
    """One webhook to send: the tenant's route and the exact body Stripe would sign."""

    tenant_id: str
    event_id: str
    body: bytes


@dataclass(frozen=True)
class UsageBatch:
    """One tenant's part of an edge usage batch: a `usage.events` record's content."""

    tenant_id: str
    batch_id: str
    items: tuple[tuple[str, int], ...]  # (customer id, units)
    # Named metered features' units of the batch: (customer id, feature, units).
    features: tuple[tuple[str, str, int], ...] = ()

    def value(self) -> bytes:
        node = self.batch_id.rpartition(":")[0]
        return orjson.dumps(
            {
                "batch_id": self.batch_id,
                "node_id": node,
                "region": "eu",
                "tenant_id": self.tenant_id,
                "sent_at": float(PERIOD[0]),
                "received_at": float(PERIOD[0]),
                "items": [{"customer_id": c, "units": u} for c, u in self.items]
                + [{"customer_id": c, "units": u, "feature": f} for c, f, u in self.features],
            }
        )


@dataclass
class Workload:
    tenants: list[Tenant]
    secrets: dict[str, str]
    events: list[Delivery] = field(default_factory=list)
    usage: list[UsageBatch] = field(default_factory=list)
    expected: dict[tuple[str, str], Expected] = field(default_factory=dict)
    # Units of each named metered feature per customer over the distinct usage batches.
    feature_used: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    # The last Stripe subscription object and paid top-ups per customer: the oracle's input.
    finals: dict[tuple[str, str], tuple[dict[str, Any], int]] = field(default_factory=dict)

    @property
    def keys(self) -> list[tuple[str, str]]:
        return sorted(self.expected)

    def deliveries(self, copies: int = 1, rng: random.Random | None = None) -> list[Delivery]:
        """Every event `copies` times; shuffled over the whole window when `rng` is given."""
        out = [d for d in self.events for _ in range(copies)]
        if rng is not None:
            rng.shuffle(out)
        return out


def make_tenant(tenant_id: str, regions: Sequence[str]) -> tuple[Tenant, str]:
    secret = "whsec_" + secrets.token_hex(16)
    tenant = Tenant(
        id=tenant_id,
        webhook_secrets=(WebhookSecret(id="s1", secret=secret),),
        stripe_api_key="sk_test_" + secrets.token_hex(12),
        regions=tuple(regions),
        plans=dict(CATALOG),
    )
    return tenant, secret


def expected_quota(final: dict[str, Any], topups: int, used: int = 0) -> Expected:
    """The oracle: the final subscription object, the plan catalog and the units used."""
    counting = final["status"] in _COUNTING
    limit = 0
    if counting:
        for item in final["items"]["data"]:
            limit += QUOTA[item["price"]["lookup_key"]] * item["quantity"]
    limit += topups * TOPUP_UNITS
    status = "blocked" if not counting else "exhausted" if used >= limit else "active"
    return Expected(limit, used, max(limit - used, 0), status, PERIOD[0], PERIOD[1])


def _lifecycle(
    rng: random.Random, cus: str, sub: str
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """(event type, subscription object) steps; the last one is the final Stripe object."""
    steps: list[tuple[str, str, list[tuple[Price, int]]]] = [
        ("customer.subscription.created", rng.choice(["trialing", "active"]), [(BASIC, 1)])
    ]
    for _ in range(rng.randint(1, 4)):
        status = rng.choice(["active", "active", "past_due", "trialing"])
        items = [(_PRICES[rng.choice(["basic", "pro"])], rng.randint(1, 5))]
        if rng.random() < 0.3:
            items.append((PRO if items[0][0] is BASIC else BASIC, rng.randint(1, 3)))
        steps.append(("customer.subscription.updated", status, items))
    ending = rng.random()
    if ending < 0.15:
        steps.append(("customer.subscription.deleted", "canceled", steps[-1][2]))
    elif ending < 0.25:
        steps.append(("customer.subscription.updated", "unpaid", steps[-1][2]))
    else:
        steps.append(("customer.subscription.updated", "active", steps[-1][2]))
    objects = [
        # A step counter in metadata keeps every snapshot distinct, as real ones are.
        (kind, subscription(sub, cus, status, items, period=PERIOD, metadata={"step": str(i)}))
        for i, (kind, status, items) in enumerate(steps)
    ]
    return objects, objects[-1][1]


def build(
    tenant_ids: Iterable[str],
    customers_per_tenant: int,
    *,
    regions: Sequence[str] = ("eu",),
    seed: int = 7,
    tenant_regions: dict[str, Sequence[str]] | None = None,
) -> Workload:
    """Tenants, their events (distinct `created` per customer, in a 3-day window), oracle."""
    rng = random.Random(seed)
    tenants: list[Tenant] = []
    secrets_by_tenant: dict[str, str] = {}
    workload = Workload(tenants, secrets_by_tenant)
    for tenant_id in tenant_ids:
        served = (tenant_regions or {}).get(tenant_id, regions)
        tenant, secret = make_tenant(tenant_id, served)
        tenants.append(tenant)
        secrets_by_tenant[tenant_id] = secret
        for n in range(customers_per_tenant):
            cus, sub = f"cus_{tenant_id}_{n}", f"sub_{tenant_id}_{n}"
            steps, final = _lifecycle(rng, cus, sub)
            topups = rng.randint(0, 2) if final["status"] in _COUNTING else 0
            times = sorted(rng.sample(range(WINDOW), len(steps) + topups))
            bodies = [
                event(kind, obj, created=WINDOW_START + times[i], event_id=f"evt_{sub}_{i}")
                for i, (kind, obj) in enumerate(steps)
            ]
            for k in range(topups):
                paid_at = WINDOW_START + times[len(steps) + k]
                paid = invoice(
                    f"in_{sub}_{k}", cus, subscription_id=None, lines=[(TOPUP, 1)], paid_at=paid_at
                )
                bodies.append(
                    event("invoice.paid", paid, created=paid_at, event_id=f"evt_{sub}_t{k}")
                )
            # The final subscription snapshot must be the newest: move it past the top-ups.
            last = next(b for b in reversed(bodies) if b["type"].startswith("customer."))
            last["created"] = WINDOW_START + WINDOW + 1
            for body in bodies:
                workload.events.append(Delivery(tenant_id, body["id"], orjson.dumps(body)))
            workload.expected[(tenant_id, cus)] = expected_quota(final, topups)
            workload.finals[(tenant_id, cus)] = (final, topups)
    return workload


def add_usage(
    workload: Workload,
    rng: random.Random,
    *,
    nodes: Sequence[str] = ("edge-a", "edge-b"),
    batches_per_node: int = 8,
    resend: float = 0.2,
    max_units: int = 400,
    features: Sequence[str] = (),
) -> list[UsageBatch]:
    """Usage batches of every tenant from `nodes` (some re-sent), and the oracle's `used`.

    Returns the records in the order an ingress would have written them; `workload.usage`
    and `workload.expected` take the distinct batches into account. With `features`, each
    chosen customer also spends units of one of them in the batch (`workload.feature_used`
    is their oracle); without, the draws are those of before features.
    """
    used: dict[tuple[str, str], int] = {}
    out: list[UsageBatch] = []
    for tenant in workload.tenants:
        customers = sorted(c for t, c in workload.expected if t == tenant.id)
        for node in nodes:
            for seq in range(1, batches_per_node + 1):
                chosen = rng.sample(customers, rng.randint(1, min(4, len(customers))))
                items = tuple((c, rng.randint(1, max_units)) for c in chosen)
                spent = (
                    tuple((c, rng.choice(features), rng.randint(1, max_units)) for c in chosen)
                    if features
                    else ()
                )
                batch = UsageBatch(tenant.id, f"{node}:{seq}", items, spent)
                workload.usage.append(batch)
                for customer, feature, units in spent:
                    per = workload.feature_used.setdefault((tenant.id, customer), {})
                    per[feature] = per.get(feature, 0) + units
                for customer, units in items:
                    used[(tenant.id, customer)] = used.get((tenant.id, customer), 0) + units
                out.append(batch)
                if rng.random() < resend:  # the edge re-sends a batch it got no answer for
                    out.append(batch)
    for key, units in used.items():
        final, topups = workload.finals[key]
        workload.expected[key] = expected_quota(final, topups, units)
    return out
