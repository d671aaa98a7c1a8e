"""Records as the ingress writes them, Stripe's side of each event, and the environment of a
test's worker process.

The worker fetches each event's current object from Stripe, as in production: a test's
worker talks to the Stripe stand-in (`quotaflow.testing.stripe_standin`), and the test
plays Stripe with a `StripeFeed`: the object changes first (put into the stand-in), then
the event is stamped as received and produced. `stripe=None` runs the worker in snapshot
mode (fetch off) instead, and the feed puts nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from quotaflow.commands.ops.lag import Lag, consumer_lag
from quotaflow.envelope import Envelope
from quotaflow.settings import Settings
from quotaflow.testing.harness import eventually, pipeline_env
from quotaflow.testing.stripe_standin import StandinControl
from tables.tenant import Tenant

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]
JSON = dict[str, Any]
PERIOD = (1_767_225_600, 1_769_904_000)
# Objects an event carries that the worker fetches back by id: the event's own subscription
# or customer. Invoice and checkout events name a subscription whose state they do not
# carry: a test puts that subscription itself (`StripeFeed.change`).
FETCHED_KINDS = ("subscription", "customer")


def stripe_record(tenant: str, body: dict[str, Any]) -> Record:
    """The record the ingress writes for `body`, received now."""
    env = Envelope(tenant, str(body["id"]), str(body["type"]), False, time.time(), "s1")
    return tenant.encode(), orjson.dumps(body), env.headers()


def stripe_account(tenant: Tenant) -> str | None:
    """Where Stripe (the stand-in) keeps a tenant's objects: its Connect account, else its
    API key; None for a tenant without a key (the worker cannot fetch for it)."""
    if tenant.stripe_account is not None:
        return tenant.stripe_account
    return None if tenant.stripe_api_key is None else tenant.stripe_api_key.get_secret_value()


def carried_object(body: Mapping[str, Any]) -> JSON | None:
    """The subscription or customer an event carries (its `data.object`), if any."""
    data = body.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if isinstance(obj, dict) and obj.get("object") in FETCHED_KINDS and "id" in obj:
        return obj
    return None


class StripeFeed:
    """Stripe's side of a test: each object changes before its event is sent.

    `records(events)` puts every event's own subscription or customer into the stand-in,
    in order (the last put of an id is what Stripe answers from then on), and only then
    stamps the records as received, so no event is received before the change it signals.
    Without a stand-in (`stripe=None`: the worker's fetch is off) it only makes records.
    Tenants not in `tenants` (a test's unknown tenant) get no objects.
    """

    def __init__(self, stripe: StandinControl | None, tenants: Iterable[Tenant]) -> None:
        self.stripe = stripe
        self.accounts = {t.id: stripe_account(t) for t in tenants}

    def change(self, tenant_id: str, *objects: Mapping[str, Any]) -> None:
        """Puts `objects` as the tenant's current versions (a no-op without a stand-in)."""
        account = self.accounts.get(tenant_id)
        if self.stripe is not None and account is not None and objects:
            self.stripe.put(account, *objects)

    def records(self, events: Sequence[tuple[str, JSON]]) -> list[Record]:
        """(tenant id, event body) → records, after their objects were put."""
        by_tenant: dict[str, list[JSON]] = {}
        for tenant_id, body in events:
            obj = carried_object(body)
            if obj is not None:
                by_tenant.setdefault(tenant_id, []).append(obj)
        for tenant_id, objects in by_tenant.items():
            self.change(tenant_id, *objects)
        return [stripe_record(tenant_id, body) for tenant_id, body in events]

    def assert_fetched(self, tenant_id: str, at_least: int = 1) -> None:
        """With a stand-in: the worker fetched at least `at_least` objects of the tenant,
        and none was missing (every object its events reference was put)."""
        account = self.accounts.get(tenant_id)
        if self.stripe is None or account is None:
            return
        counts = self.stripe.account_stats(account)
        fetched = sum(n for kind, n in counts["requests"].items() if kind in FETCHED_KINDS)
        assert fetched >= at_least, f"{tenant_id}: {fetched} fetches, wanted {at_least}+"
        assert "404" not in counts["statuses"], f"{tenant_id}: a fetched object was missing"


def worker_env(
    settings: Settings,
    tenants_file: Path,
    data: Path,
    *,
    stripe: StandinControl | str | None,
    **extra: str,
) -> dict[str, str]:
    """`quotaflow worker` on the test's topics; `extra`: QUOTAFLOW_* overrides.

    `stripe`: the Stripe API the worker fetches from (the stand-in, or its URL), with the
    fetch on as in production; None: snapshot mode (fetch off).
    """
    url = stripe.url if isinstance(stripe, StandinControl) else stripe
    return {
        **pipeline_env(
            bootstrap=settings.kafka_bootstrap,
            tenants_file=tenants_file,
            data_dir=data,
            stripe_api=url,
            topic_prefix=settings.topic_prefix,
            partitions=settings.partitions,
            app_id=settings.app_id,
        ),
        **{f"QUOTAFLOW_{k.upper()}": v for k, v in extra.items()},
    }


async def wait_committed(
    settings: Settings, timeout: float = 120.0, topics: Sequence[str] | None = None
) -> None:
    """Waits until the worker's group has committed every record of `topics`
    (default: `stripe.events`)."""
    wanted = set(topics or [settings.topics.stripe_events])
    behind: list[Lag] = []

    async def caught_up() -> bool:
        nonlocal behind
        rows = await consumer_lag(settings, group=settings.app_id)
        source = [r for r in rows if r.topic in wanted]
        behind = [r for r in source if r.lag]
        return {r.topic for r in source} == wanted and not behind

    await eventually(
        caught_up,
        timeout=timeout,
        interval=0.5,
        what="the worker catches up",
        detail=lambda: f"behind: {behind}",
    )
