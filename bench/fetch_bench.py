"""Stripe fetch benchmark (issue 13): the billing worker at its defaults (the current object
fetched from Stripe for every event, `rocksdb://` store) against a Stripe stand-in process
whose latency, rate limit and answers are set per account.

Run: `.venv/bin/python -m bench.fetch_bench [--quick] [--only idle,burst,rate,isolation]
[--worker-env KEY=VALUE ...] [--no-standin-rate-limit] [--keep DIR]`. Prints one JSON
document; `python -m bench --only fetch` runs it too. The full run takes about 3 minutes
against a worker that meets the targets (longer against one that does not: every wait is
bounded, see the end); `--quick` (6 x 8 burst, 4 tenants for 4 s, 3 s isolation phases)
about a minute.

Processes: the stand-in (`python -m quotaflow.testing.stripe_standin`), `quotaflow
ingress`, `quotaflow worker` with `QUOTAFLOW_STRIPE_FETCH=true` (the default) and
`QUOTAFLOW_STRIPE_API_BASE` at the stand-in, `quotaflow push --region eu` and one
instrumented edge node (`bench.e2e_bench`'s: it records when it applied each update), all
through `bench.stack.pipeline`. Every tenant has its own Stripe API key (direct keys, test
mode), so each is its own account at the stand-in and in the worker's token buckets. The
stand-in limits every account to Stripe's own test-mode rate (25 requests/s, burst 25; past
it 429 as Stripe answers) unless `--no-standin-rate-limit`. The worker runs at its
defaults; `--worker-env` changes one, and every section of the JSON says which were changed
(`worker_defaults_changed`).

Every webhook is a `customer.subscription.created` for a new customer (so it yields exactly
one quota update, and no two webhooks share an object: nothing coalesces). Before it is
POSTed, the bench puts its subscription in the stand-in under the tenant's key, as Stripe
would have it (for the load scenarios, all of a phase's objects before the phase starts).
One wall clock (CLOCK_REALTIME, shared by the processes) gives the hops: the webhook's due
time (or send time), the ingress's 200, the worker's `updated_at` and the edge's apply.

Scenarios, each its own section of the JSON, in this order, on one pipeline (each scenario
has its own tenants; one webhook per tenant warms every client first):
- `idle`: one webhook at a time on an idle pipeline (stand-in latency 0); each waited for
  until applied at the edge; p50/p99 with the hops. Target p99 <= 25 ms.
- `burst`: stand-in at 250 ms per GET; 6 tenants x 40 webhooks POSTed all at once; the
  time from the last 200 of the ingress to the last quota applied at the edge, and the
  per-event webhook -> edge latency. Target: <= 6 s.
- `rate`: 20 tenants, each driven open loop at its account's bucket rate (a worker setting
  for it if there is one, else `streams.stripe_client.DEFAULT_RATES`, test mode: 20/s) for
  20 s, stand-in latency 100 ms; quota updates applied at the edge per second in the window
  after a 2 s ramp, against the sum of the rates. Target >= 90 %.
- `isolation`: a healthy tenant (latency 0) and a slow one (4 s per GET), both at 10
  webhooks/s; the healthy tenant's webhook -> edge p50/p99 over 30 s alone (baseline),
  then over 30 s with the slow tenant sending (it starts 5 s earlier, so its backlog is
  there for the whole window). Both tenants are picked to share a `stripe.events`
  partition, the hard case for per-tenant lanes. Target: p99 with the slow tenant
  <= 1.5 x baseline p99.

A scenario that the worker cannot finish in time is not waited for indefinitely: latencies
of webhooks still missing when it gives up count as (give-up time - due), so the summaries
are then lower bounds (`censored` says how many). Then the stand-in answers that
scenario's accounts at once, so the worker drains the backlog before the next scenario
(`drained` says whether it did, within `--drain-s`, default 90 s). The stand-in's counters
(requests, answers by status, highest in flight) are reset at the start of each scenario
and read before the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from bench.common import (
    Proc,
    Process,
    ProcSampler,
    Report,
    bench_workspace,
    load_average,
    processes,
    progress,
    summary,
    wait_http,
)
from bench.stack import Stack, pipeline

SCENARIOS = ("idle", "burst", "rate", "isolation")
NODES = (("eu", "eu-1"),)
PARTITIONS = 8  # QUOTAFLOW_PARTITIONS as bench.stack sets it (the default)
DAY = 86_400
PLAN = "basic"
PLAN_QUOTA = 1000
# What Stripe itself allows per account (read requests/s); the worker's buckets stay below.
STRIPE_LIMITS = {"live": 100.0, "test": 25.0}


# --- sizes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    idle_webhooks: int = 50
    idle_gap_s: float = 0.1
    burst_tenants: int = 6
    burst_per_tenant: int = 40
    burst_latency_s: float = 0.25
    burst_deadline_s: float = 120.0
    rate_tenants: int = 20
    rate_seconds: float = 20.0
    rate_latency_s: float = 0.1
    rate_ramp_s: float = 2.0
    rate_settle_s: float = 10.0
    iso_rate: float = 10.0
    iso_slow_latency_s: float = 4.0
    iso_seconds: float = 30.0
    iso_lead_s: float = 5.0
    iso_settle_s: float = 15.0
    drain_s: float = 90.0


QUICK = Sizes(
    idle_webhooks=10,
    burst_per_tenant=8,
    burst_deadline_s=30.0,
    rate_tenants=4,
    rate_seconds=4.0,
    rate_ramp_s=1.0,
    rate_settle_s=3.0,
    iso_seconds=3.0,
    iso_lead_s=4.5,
    iso_settle_s=6.0,
    drain_s=20.0,
)


# --- tenants ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchTenant:
    id: str
    secret: str
    api_key: str
    mode: str = "test"

    def document(self) -> Any:
        from pydantic import SecretStr

        from tables.tenant import PlanEntry, Tenant, WebhookSecret

        return Tenant(
            id=self.id,
            mode="test" if self.mode == "test" else "live",
            webhook_secrets=(WebhookSecret(id="s1", secret=SecretStr(self.secret)),),
            stripe_api_key=SecretStr(self.api_key),
            regions=("eu",),
            plans={PLAN: PlanEntry(quota=PLAN_QUOTA, rate_per_second=10, features=("api",))},
        )


def bench_tenant(tid: str) -> BenchTenant:
    return BenchTenant(tid, f"whsec_fetch_{tid}", f"sk_test_fetch_{tid.replace('-', '_')}")


def partition_of(tenant_id: str, partitions: int = PARTITIONS) -> int:
    """The `stripe.events` partition of a tenant: the ingress keys records by tenant id with
    aiokafka's default partitioner."""
    from aiokafka.partitioner import DefaultPartitioner

    every = list(range(partitions))
    partition: int = DefaultPartitioner()(tenant_id.encode(), every, every)
    return partition


@dataclass(frozen=True)
class Tenants:
    warm: tuple[BenchTenant, ...]
    idle: BenchTenant
    burst: tuple[BenchTenant, ...]
    rate: tuple[BenchTenant, ...]
    healthy: BenchTenant
    slow: BenchTenant

    @classmethod
    def make(cls, sizes: Sizes) -> Tenants:
        healthy = bench_tenant("fi-healthy")
        target = partition_of(healthy.id)
        slow_id = next(
            f"fi-slow-{n}" for n in range(1000) if partition_of(f"fi-slow-{n}") == target
        )
        return cls(
            warm=tuple(bench_tenant(f"fw-{i}") for i in range(4)),
            idle=bench_tenant("fd-idle"),
            burst=tuple(bench_tenant(f"fb-{i:02d}") for i in range(sizes.burst_tenants)),
            rate=tuple(bench_tenant(f"fr-{i:02d}") for i in range(sizes.rate_tenants)),
            healthy=healthy,
            slow=bench_tenant(slow_id),
        )

    def all(self) -> list[BenchTenant]:
        return [*self.warm, self.idle, *self.burst, *self.rate, self.healthy, self.slow]


def bucket_rate(mode: str, changed: Mapping[str, str]) -> tuple[float, str]:
    """The worker's token-bucket rate per Stripe account of `mode`, and where it came from:
    a Stripe rate setting of the worker if it has one (`QUOTAFLOW_STRIPE_…RATE…_TEST`, or a
    mapping by mode; the meter's settings aside), as the worker sees it with `changed`;
    else `streams.stripe_client.DEFAULT_RATES`."""
    from unittest import mock

    from quotaflow.settings import Settings
    from streams import stripe_client

    with mock.patch.dict(os.environ, changed):
        settings = Settings()
    for name in Settings.model_fields:
        if not (name.startswith("stripe") and "rate" in name):
            continue
        env = f"QUOTAFLOW_{name.upper()}"
        value = getattr(settings, name)
        if name.endswith(f"_{mode}") and isinstance(value, int | float):
            return float(value), env
        if isinstance(value, Mapping) and mode in value:
            return float(value[mode]), f"{env}[{mode!r}]"
    rates: Mapping[str, float] = stripe_client.DEFAULT_RATES
    return float(rates[mode]), f"streams.stripe_client.DEFAULT_RATES[{mode!r}]"


# --- Stripe objects and webhooks -------------------------------------------------------


class Hook(NamedTuple):
    tenant: BenchTenant
    key: str  # tenant/customer, as the edge knows the quota
    body: bytes
    signature: str
    obj: dict[str, Any]  # the subscription as Stripe has it
    due: float  # seconds after the phase starts


def subscription(sub_id: str, customer: str, now: int) -> dict[str, Any]:
    """An active subscription of one `basic` unit, in the current (basil) API shape."""
    price = {
        "id": "price_basic",
        "object": "price",
        "active": True,
        "currency": "usd",
        "lookup_key": PLAN,
        "product": "prod_api",
        "recurring": {"interval": "month", "usage_type": "licensed"},
        "type": "recurring",
        "unit_amount": 1000,
        "metadata": {},
    }
    item = {
        "id": f"si_{sub_id}",
        "object": "subscription_item",
        "quantity": 1,
        "subscription": sub_id,
        "metadata": {},
        "price": price,
        "current_period_start": now - DAY,
        "current_period_end": now + 29 * DAY,
    }
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": "active",
        "created": now,
        "livemode": False,
        "cancel_at_period_end": False,
        "cancel_at": None,
        "ended_at": None,
        "trial_end": None,
        "metadata": {},
        "items": {"object": "list", "data": [item], "has_more": False},
    }


class Factory:
    """Signed `customer.subscription.created` webhooks, each for a new customer."""

    def __init__(self) -> None:
        self.n = 0

    def hook(self, tenant: BenchTenant, tag: str, due: float = 0.0) -> Hook:
        self.n += 1
        now = int(time.time())
        cus, sub = f"cus_{tag}{self.n}", f"sub_{tag}{self.n}"
        obj = subscription(sub, cus, now)
        event = {
            "id": f"evt_{tag}{self.n}",
            "object": "event",
            "api_version": "2025-03-31.basil",
            "created": now,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": "customer.subscription.created",
            "data": {"object": obj},
        }
        body = orjson.dumps(event)
        mac = hmac.new(tenant.secret.encode(), b"%d." % now + body, "sha256").hexdigest()
        return Hook(tenant, f"{tenant.id}/{cus}", body, f"t={now},v1={mac}", obj, due)

    def steady(
        self, tenants: Sequence[BenchTenant], rate: float, seconds: float, tag: str, start: float
    ) -> list[Hook]:
        """Each tenant at `rate`/s for `seconds` from `start`, the tenants' ticks staggered."""
        hooks = []
        for t, tenant in enumerate(tenants):
            offset = start + t / (rate * len(tenants))
            hooks += [self.hook(tenant, tag, offset + i / rate) for i in range(int(rate * seconds))]
        return sorted(hooks, key=lambda h: h.due)


# --- the stand-in ----------------------------------------------------------------------


class Standin:
    """The Stripe stand-in process's control surface, as the bench uses it."""

    def __init__(self, base_url: str) -> None:
        from quotaflow.testing.stripe_standin import StandinControl

        self.base_url = base_url
        self.control = StandinControl(base_url, timeout=30.0)

    def put(self, hook: Hook) -> None:
        self.control.put(hook.tenant.api_key, hook.obj)

    def put_all(self, hooks: Sequence[Hook], chunk: int = 500) -> float:
        """Puts every hook's object under its tenant's key; returns the seconds it took."""
        started = time.monotonic()
        by_key: dict[str, list[dict[str, Any]]] = {}
        for hook in hooks:
            by_key.setdefault(hook.tenant.api_key, []).append(hook.obj)
        for key, objects in by_key.items():
            for i in range(0, len(objects), chunk):
                self.control.put(key, *objects[i : i + chunk])
        return time.monotonic() - started

    def defaults(self, *, rate_limit: float | None) -> None:
        """Every account: no latency, `rate_limit` requests/s (burst = rate), answering."""
        self.control.configure(None, latency=0.0, rate_limit=rate_limit, burst=None, down=None)

    def latency(self, tenants: Sequence[BenchTenant], seconds: float) -> None:
        for tenant in tenants:
            self.control.configure(tenant.api_key, latency=seconds)

    def stats(self, tenants: Sequence[BenchTenant], per_account: bool = True) -> dict[str, Any]:
        """What the stand-in saw from these tenants' accounts since its stats were reset:
        requests by kind and answers by status (summed, and by tenant id if `per_account`),
        the highest in flight of one account and of all accounts together."""
        from quotaflow.testing.stripe_standin import account_label

        doc = self.control.stats()
        accounts: Mapping[str, Any] = doc.get("accounts", {})
        mine: dict[str, Any] = {}
        requests: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        for t in tenants:
            counts = accounts.get(account_label(t.api_key)) or {}
            mine[t.id] = {
                "requests": counts.get("requests", {}),
                "statuses": counts.get("statuses", {}),
                "max_in_flight": counts.get("max_in_flight", 0),
            }
            requests.update(mine[t.id]["requests"])
            statuses.update(mine[t.id]["statuses"])
        out: dict[str, Any] = {
            "requests": dict(requests),
            "statuses": dict(statuses),
            "max_in_flight_one_account": max(
                (m["max_in_flight"] for m in mine.values()), default=0
            ),
            "max_in_flight_all_accounts": doc.get("max_in_flight"),
        }
        if per_account:
            out["accounts"] = mine
        return out

    def reset_stats(self) -> None:
        self.control.reset_stats()


@contextlib.contextmanager
def standin_process(work: Path, started: list[Process]) -> Iterator[tuple[Proc, str]]:
    """`python -m quotaflow.testing.stripe_standin` on a free port, until its health answers."""
    from quotaflow.commands.localkafka import free_port

    port = free_port()
    argv = [sys.executable, "-m", "quotaflow.testing.stripe_standin", "--port", str(port)]
    proc = Proc(argv, {}, work / "standin.log")
    started.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/_standin/health", 30, proc)
    yield proc, url


# --- driving and observing -------------------------------------------------------------


class Answer(NamedTuple):
    due: float  # wall clock
    sent: float
    answered: float


class Tap:
    """Follows an edge node's tap file (`bench.e2e_bench.edge_node`): key -> (updated_at,
    applied_at) of the first apply, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.rest = b""
        self.seen: dict[str, tuple[float, float]] = {}

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            parts = line.split()
            if len(parts) == 4:
                key = parts[0].decode()
                if key not in self.seen:
                    self.seen[key] = (float(parts[2]), float(parts[3]))

    async def wait(self, keys: Sequence[str], timeout: float, interval: float = 0.1) -> bool:
        """Polls until every key was applied or `timeout` passed; True if all were."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if all(k in self.seen for k in keys):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(interval)


class Posted(NamedTuple):
    answers: dict[str, Answer]  # key -> Answer, of the webhooks answered 200
    statuses: dict[str, int]
    achieved_per_s: float
    start: float  # wall clock of due time 0


async def post_all(port: int, hooks: Sequence[Hook]) -> Posted:
    """POSTs each hook at its due time (open loop: a late client is charged for it; all at
    once when due together)."""
    import aiohttp

    answers: dict[str, Answer] = {}
    statuses: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(hook: Hook, due: float) -> None:
            url = f"http://127.0.0.1:{port}/v1/webhooks/stripe/{hook.tenant.id}"
            headers = {"Stripe-Signature": hook.signature, "Content-Type": "application/json"}
            sent = time.time()
            try:
                async with session.post(url, data=hook.body, headers=headers) as response:
                    await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            statuses[status] = statuses.get(status, 0) + 1
            if status == "200":
                answers[hook.key] = Answer(due, sent, time.time())

        tasks = []
        wall0, mono0 = time.time() + 0.05, time.monotonic() + 0.05
        for hook in sorted(hooks, key=lambda h: h.due):
            delay = mono0 + hook.due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(hook, wall0 + hook.due)))
        await asyncio.gather(*tasks)
        span = max(1e-9, time.monotonic() - mono0)
    return Posted(answers, statuses, len(hooks) / span, wall0)


def latencies(
    hooks: Sequence[Hook], answers: Mapping[str, Answer], tap: Tap, gave_up: float
) -> dict[str, Any]:
    """Webhook (due) -> applied at the edge, with the hops; a hook answered 200 but not yet
    applied counts as `gave_up - due` (censored)."""
    total, ingress, to_worker, to_edge = [], [], [], []
    censored = 0
    for hook in hooks:
        answer = answers.get(hook.key)
        if answer is None:
            continue
        ingress.append((answer.answered - answer.due) * 1000)
        hit = tap.seen.get(hook.key)
        if hit is None:
            censored += 1
            total.append((gave_up - answer.due) * 1000)
            continue
        updated_at, applied = hit
        total.append((applied - answer.due) * 1000)
        to_worker.append((updated_at - answer.due) * 1000)
        to_edge.append((applied - updated_at) * 1000)
    out = summary(total)
    if total:
        out["first"] = round(min(total), 2)
    return {
        "webhook_to_edge_ms": out,
        "censored": censored,
        "hops_ms": {
            "ingress_200": summary(ingress),
            "due_to_worker_apply": summary(to_worker),
            "worker_apply_to_edge": summary(to_edge),
        },
    }


@dataclass
class Ctx:
    stack: Stack
    standin: Standin
    tap: Tap
    samplers: dict[str, ProcSampler]
    sizes: Sizes
    tenants: Tenants
    factory: Factory
    changed: dict[str, str]  # worker settings changed from their defaults
    rate_limit: float | None  # the stand-in's per-account limit (requests/s)


async def drain(ctx: Ctx, hooks: Sequence[Hook], tenants: Sequence[BenchTenant]) -> bool:
    """Makes these accounts answer at once and waits until every hook is applied."""
    ctx.standin.latency(tenants, 0.0)
    return await ctx.tap.wait([h.key for h in hooks], ctx.sizes.drain_s)


# --- scenarios -------------------------------------------------------------------------


async def warm_up(ctx: Ctx) -> dict[str, Any]:
    """One webhook per tenant of the run (latency 0): the worker has its partitions and a
    client per tenant, and the fetch path is checked end to end."""
    tenants = ctx.tenants.all()
    hooks = [ctx.factory.hook(t, "warm") for t in tenants]
    ctx.standin.put_all(hooks)
    posted = await post_all(ctx.stack.ingress_port, hooks)
    started = time.monotonic()
    if not await ctx.tap.wait([h.key for h in hooks], 90.0):
        raise RuntimeError(f"warm-up: not every webhook reached the edge in 90 s {posted.statuses}")
    gets = ctx.standin.stats(tenants, per_account=False)["requests"].get("subscription", 0)
    if gets < len(hooks):
        raise RuntimeError(
            f"warm-up: the stand-in saw {gets} subscription GETs for {len(hooks)} webhooks: "
            "is the worker fetching (QUOTAFLOW_STRIPE_FETCH, QUOTAFLOW_STRIPE_API_BASE)?"
        )
    return {
        "webhooks": len(hooks),
        "statuses": posted.statuses,
        "all_applied_s": round(time.monotonic() - started, 2),
        "standin_subscription_gets": gets,
    }


async def idle(ctx: Ctx) -> dict[str, Any]:
    import aiohttp

    tenant = ctx.tenants.idle
    ctx.standin.latency([tenant], 0.0)
    total, ingress, to_worker, to_edge, missing = [], [], [], [], 0
    url = f"http://127.0.0.1:{ctx.stack.ingress_port}/v1/webhooks/stripe/{tenant.id}"
    async with aiohttp.ClientSession() as session:
        for _ in range(ctx.sizes.idle_webhooks):
            hook = ctx.factory.hook(tenant, "idle")
            ctx.standin.put(hook)
            await asyncio.sleep(ctx.sizes.idle_gap_s)
            headers = {"Stripe-Signature": hook.signature, "Content-Type": "application/json"}
            sent = time.time()
            async with session.post(url, data=hook.body, headers=headers) as response:
                await response.read()
                answered, status = time.time(), response.status
            if status != 200 or not await ctx.tap.wait([hook.key], 10.0, interval=0.001):
                missing += 1
                continue
            updated_at, applied = ctx.tap.seen[hook.key]
            total.append((applied - sent) * 1000)
            ingress.append((answered - sent) * 1000)
            to_worker.append((updated_at - sent) * 1000)
            to_edge.append((applied - updated_at) * 1000)
    p99 = summary(total).get("p99")
    return {
        "webhooks": ctx.sizes.idle_webhooks,
        "gap_between_webhooks_s": ctx.sizes.idle_gap_s,
        "standin_latency_s": 0.0,
        "missing": missing,
        "webhook_to_edge_ms": summary(total),
        "hops_ms": {
            "ingress_200": summary(ingress),
            "sent_to_worker_apply": summary(to_worker),
            "worker_apply_to_edge": summary(to_edge),
        },
        "standin": ctx.standin.stats([tenant], per_account=False),
        "target": {"p99_ms_max": 25},
        "met": p99 is not None and p99 <= 25,
        "note": "latency counts from the POST's send time; the tap is polled every 1 ms",
    }


async def burst(ctx: Ctx) -> dict[str, Any]:
    sizes, tenants = ctx.sizes, ctx.tenants.burst
    ctx.standin.latency(tenants, sizes.burst_latency_s)
    hooks = [ctx.factory.hook(t, "burst") for _ in range(sizes.burst_per_tenant) for t in tenants]
    put_s = ctx.standin.put_all(hooks)
    answers, statuses, *_ = await post_all(ctx.stack.ingress_port, hooks)
    last_200 = max((a.answered for a in answers.values()), default=time.time())
    deadline = max(1.0, last_200 + sizes.burst_deadline_s - time.time())
    done = await ctx.tap.wait([h.key for h in hooks], deadline)
    gave_up = time.time()
    figures = latencies(hooks, answers, ctx.tap, gave_up)
    applied = [ctx.tap.seen[h.key][1] for h in hooks if h.key in ctx.tap.seen]
    last_applied = max(applied) if done else gave_up
    per_tenant = {}
    for t in tenants:
        mine = [ctx.tap.seen.get(h.key, (0.0, gave_up))[1] for h in hooks if h.tenant is t]
        per_tenant[t.id] = round((max(mine) - last_200) * 1000, 1)
    stats = ctx.standin.stats(tenants)
    drained = done or await drain(ctx, hooks, tenants)
    span_ms = round((last_applied - last_200) * 1000, 1)
    return {
        "tenants": len(tenants),
        "webhooks_per_tenant": sizes.burst_per_tenant,
        "standin_latency_s": sizes.burst_latency_s,
        "objects_put_s": round(put_s, 2),
        "statuses": statuses,
        "all_applied": done,
        "last_200_to_last_applied_ms": span_ms,
        "last_200_to_last_applied_is_lower_bound": not done,
        "last_200_to_last_applied_per_tenant_ms": per_tenant,
        "first_200_to_last_200_ms": round(
            (last_200 - min((a.answered for a in answers.values()), default=last_200)) * 1000, 1
        ),
        **figures,
        "applied_before_give_up": len(applied),
        "standin": stats,
        "drained": drained,
        "target": {"last_200_to_last_applied_ms_max": 6000},
        "met": done and span_ms <= 6000,
    }


async def rate(ctx: Ctx) -> dict[str, Any]:
    sizes, tenants = ctx.sizes, ctx.tenants.rate
    per_tenant, source = bucket_rate("test", ctx.changed)
    ctx.standin.latency(tenants, sizes.rate_latency_s)
    hooks = ctx.factory.steady(tenants, per_tenant, sizes.rate_seconds, "rate", 0.0)
    put_s = ctx.standin.put_all(hooks)
    answers, statuses, achieved, start = await post_all(ctx.stack.ingress_port, hooks)
    end = start + sizes.rate_seconds
    ctx.tap.poll()
    window = (start + sizes.rate_ramp_s, end)
    keys = {h.key for h in hooks}
    in_window = sum(
        1 for k in keys if k in ctx.tap.seen and window[0] <= ctx.tap.seen[k][1] < window[1]
    )
    updates_per_s = in_window / (window[1] - window[0])
    by_end = sum(1 for k in keys if k in ctx.tap.seen and ctx.tap.seen[k][1] < end)
    done = await ctx.tap.wait(list(keys), max(0.5, end + sizes.rate_settle_s - time.time()))
    gave_up = time.time()
    figures = latencies(hooks, answers, ctx.tap, gave_up)
    applied_times = sorted(ctx.tap.seen[k][1] for k in keys if k in ctx.tap.seen)
    stats = ctx.standin.stats(tenants, per_account=False)
    drained = done or await drain(ctx, hooks, tenants)
    offered = per_tenant * len(tenants)
    fraction = round(updates_per_s / offered, 4)
    return {
        "tenants": len(tenants),
        "mode": "test",
        "rate_per_tenant_per_s": per_tenant,
        "rate_per_tenant_source": source,
        "sum_of_rates_per_s": offered,
        "drive_s": sizes.rate_seconds,
        "standin_latency_s": sizes.rate_latency_s,
        "objects_put_s": round(put_s, 2),
        "webhooks": len(hooks),
        "statuses": statuses,
        "achieved_post_rate_per_s": round(achieved, 1),
        "window_s": [sizes.rate_ramp_s, sizes.rate_seconds],
        "applied_in_window": in_window,
        "updates_per_s": round(updates_per_s, 1),
        "fraction_of_sum_of_rates": fraction,
        "backlog_at_end": len(hooks) - by_end,
        "all_applied_within_settle": done,
        "settle_s": sizes.rate_settle_s,
        "last_due_to_last_applied_ms": (
            round((applied_times[-1] - end) * 1000, 1) if done and applied_times else None
        ),
        **figures,
        "standin": stats,
        "drained": drained,
        "target": {"fraction_of_sum_of_rates_min": 0.9},
        "met": fraction >= 0.9,
    }


async def isolation(ctx: Ctx) -> dict[str, Any]:
    sizes = ctx.sizes
    healthy, slow = ctx.tenants.healthy, ctx.tenants.slow
    ctx.standin.latency([healthy], 0.0)
    ctx.standin.latency([slow], sizes.iso_slow_latency_s)

    async def phase(with_slow: bool) -> tuple[dict[str, Any], list[Hook]]:
        """The healthy tenant's figures; every hook of the phase."""
        lead = sizes.iso_lead_s if with_slow else 0.0
        tag = "iwith" if with_slow else "ibase"
        mine = ctx.factory.steady([healthy], sizes.iso_rate, sizes.iso_seconds, tag, lead)
        theirs = (
            ctx.factory.steady([slow], sizes.iso_rate, lead + sizes.iso_seconds, tag + "s", 0.0)
            if with_slow
            else []
        )
        ctx.standin.put_all(mine + theirs)
        answers, statuses, *_ = await post_all(ctx.stack.ingress_port, mine + theirs)
        done = await ctx.tap.wait([h.key for h in mine], sizes.iso_settle_s)
        gave_up = time.time()
        out = {
            "healthy_webhooks": len(mine),
            "slow_webhooks": len(theirs),
            "statuses": statuses,
            "healthy_all_applied": done,
            **latencies(mine, answers, ctx.tap, gave_up),
        }
        if theirs:
            slow_applied = [h for h in theirs if h.key in ctx.tap.seen]
            out["slow_tenant"] = {
                "applied_by_give_up": len(slow_applied),
                "webhook_to_edge_ms": latencies(slow_applied, answers, ctx.tap, gave_up)[
                    "webhook_to_edge_ms"
                ],
            }
        return out, mine + theirs

    base, _ = await phase(False)
    with_slow, hooks = await phase(True)
    stats = ctx.standin.stats([healthy, slow])
    drained = await drain(ctx, hooks, [slow])
    p99_base = base["webhook_to_edge_ms"].get("p99")
    p99_with = with_slow["webhook_to_edge_ms"].get("p99")
    ratio = round(p99_with / p99_base, 3) if p99_base and p99_with is not None else None
    return {
        "rate_per_tenant_per_s": sizes.iso_rate,
        "healthy_drive_s_per_phase": sizes.iso_seconds,
        "slow_tenant_starts_earlier_s": sizes.iso_lead_s,
        "standin_latency_s": {"healthy": 0.0, "slow": sizes.iso_slow_latency_s},
        "partition": {healthy.id: partition_of(healthy.id), slow.id: partition_of(slow.id)},
        "baseline": base,
        "with_slow": with_slow,
        "p99_ratio": ratio,
        "p99_ratio_is_lower_bound": bool(with_slow["censored"]),
        "standin": stats,
        "drained": drained,
        "target": {"p99_ratio_max": 1.5},
        "met": ratio is not None and ratio <= 1.5 and not with_slow["censored"],
    }


SCENARIO_FUNCS = {"idle": idle, "burst": burst, "rate": rate, "isolation": isolation}


async def scenario(ctx: Ctx, name: str) -> dict[str, Any]:
    """Runs one scenario with the load average and each process's CPU over it."""
    progress(f"scenario {name}")
    load_start = load_average()
    for sampler in ctx.samplers.values():
        sampler.mark()
    ctx.standin.reset_stats()
    started, cpu0 = time.monotonic(), time.process_time()
    result = await SCENARIO_FUNCS[name](ctx)
    wall = max(1e-9, time.monotonic() - started)
    usage = {n: s.window() for n, s in ctx.samplers.items()}
    result["cpu_cores"] = {n: u["cpu_cores"] for n, u in usage.items()} | {
        "load_client": round((time.process_time() - cpu0) / wall, 2)
    }
    result["rss_mib"] = {n: u["rss_mib"] for n, u in usage.items()}
    result["wall_s"] = round(wall, 1)
    result["worker_defaults_changed"] = ctx.changed or "none"
    result["standin_rate_limit_per_account"] = ctx.rate_limit
    result["load_start"] = load_start
    result["load_end"] = load_average()
    return result


# --- the run ---------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report = Report("fetch", vars(args))
    sizes = QUICK if args.quick else Sizes()
    if args.drain_s is not None:
        sizes = replace(sizes, drain_s=args.drain_s)
    chosen = [s for s in SCENARIOS if s in (args.only.split(",") if args.only else SCENARIOS)]
    tenants = Tenants.make(sizes)
    rate_limit = STRIPE_LIMITS["test"] if args.standin_rate_limit else None
    worker_env = {
        "QUOTAFLOW_STRIPE_FETCH": "true",
        "QUOTAFLOW_METER_ENABLED": "true",
        "QUOTAFLOW_STORE": "rocksdb://",
    }
    changed = dict(item.partition("=")[::2] for item in args.worker_env)
    report["sizes"] = asdict(sizes)
    report["config"] = {
        "worker": "quotaflow worker at its defaults (fetch on, rocksdb://, meter on, "
        "commit interval 5 s); QUOTAFLOW_STRIPE_API_BASE = the stand-in",
        "worker_defaults_changed": changed or "none",
        "harness": "bench.stack.pipeline: own topic prefix, 8 partitions, log level WARNING, "
        "tenants file; one region (eu), one pusher, one edge node",
        "tenants": "direct API keys, test mode, one account each",
        "standin_rate_limit_per_account": rate_limit,
        "standin_rate_limit_note": "Stripe's own test-mode limit; 429 past it"
        if rate_limit
        else "none (--no-standin-rate-limit)",
        "worker_bucket_test_per_s": bucket_rate("test", changed)[0],
    }
    with (
        bench_workspace(report, "fetch", args.keep) as (bootstrap, work),
        processes() as started,
        standin_process(work, started) as (standin_proc, url),
    ):
        standin = Standin(url)
        standin.defaults(rate_limit=rate_limit)
        with pipeline(
            bootstrap=bootstrap,
            work=work,
            tenants=[t.document() for t in tenants.all()],
            nodes=NODES,
            edge_module="bench.e2e_bench",
            worker_env={**worker_env, "QUOTAFLOW_STRIPE_API_BASE": url, **changed},
        ) as stack:
            procs = stack.procs | {"standin": standin_proc}
            samplers = {name: ProcSampler(p.pid) for name, p in procs.items()}
            for sampler in samplers.values():
                sampler.__enter__()
            try:
                tap = Tap(stack.taps[0])
                ctx = Ctx(
                    stack, standin, tap, samplers, sizes, tenants, Factory(), changed, rate_limit
                )
                progress("warm-up: one webhook per tenant")
                report["warmup"] = await warm_up(ctx)
                for name in chosen:
                    report[name] = await scenario(ctx, name)
                    stack.check()
            finally:
                for sampler in samplers.values():
                    sampler.__exit__()
    report["targets_met"] = {name: report[name].get("met") for name in chosen}
    report.emit()
    return report.doc


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE",
        help="change a worker default (recorded in the JSON as a changed default)",
    )  # fmt: skip
    parser.add_argument(
        "--no-standin-rate-limit", dest="standin_rate_limit", action="store_false",
        help="no 429s from the stand-in (default: Stripe's test-mode limit per account)",
    )  # fmt: skip
    parser.add_argument("--drain-s", type=float, help="longest wait for a backlog to drain")
    parser.add_argument("--keep", metavar="DIR", help="keep logs and taps in DIR")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SCENARIOS) if args.only else set()
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
