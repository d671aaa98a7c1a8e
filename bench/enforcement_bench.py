"""Enforcement lag benchmark (issue 5): once a customer's usage crosses its limit anywhere,
how long until every edge node denies it, and how many units get through meanwhile.

Run: `.venv/bin/python -m bench.enforcement_bench [--customers 150] [--rate 20]
[--spread 60] [--quick]`. Prints one JSON document.

The pipeline is `bench.stack`: ingress, worker, a pusher per region and 3 edge nodes (eu x2,
us x1), real processes, with the edges reporting usage every
`QUOTAFLOW_USAGE_REPORT_INTERVAL` (1 s) to the ingress `/v1/usage`. Every tenant is served
in both regions, so every customer lives on all 3 nodes; its limit is 50, 100, 150 or 200
units (by tenant). Each customer is driven open loop at `--rate` units/s (cost 1), unit j
to node j mod 3 via `POST /v1/consume` (paced: a late call delays the next by a full gap,
never a burst to catch up), starting at a random time within `--spread`
seconds (so crossings fall at every phase of the nodes' report ticks), until each node
has denied it (plus one more round, to see a node re-open).

What is measured, per customer, on one wall clock shared by the processes:
- crossing: the moment the total allowed across all nodes reached the limit (the limit-th
  allowed unit; the core publishes `exhausted` at used >= limit). The times come from the
  nodes' own records of each allowed consume (the tap below), not from the client: the
  client sees a grant only after the HTTP round trip, the node knows when it counted it.
  The client's count of allowed answers is checked against the nodes'.
- denied at node n: the moment from which node n denies every call. A node starts denying
  for one of two reasons, and both are exact events in its tap, not samples: it applied a
  pushed update with status `exhausted`, or its own last allowed consume left its local
  `remaining` at 0 (then it denies from that consume on, unless a later push re-opened it
  by leaving its `remaining` above 0, in which case the `exhausted` push counts). Probing
  with consumes would only bound the moment to within the probe gap (3/rate per node).
- lag = max over the 3 nodes of (denied at n) - crossing; also the push path alone
  (crossing -> `exhausted` applied at all nodes) and the core alone (crossing -> the
  worker's `updated_at` of the `exhausted` record).
- overshoot = total allowed - limit, against the bound rate x lag (per customer, and with
  the run's p99 lag).

Baseline in the same run: the same customers' load sent to a single edge node (eu-1)
only: what enforcement costs when one node sees all the traffic, beside the configured
report interval.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.common import ProcSampler, Report, bench_workspace, progress, summary
from bench.e2e_bench import N_TENANTS, NODES, Webhooks, drive, secret
from bench.stack import APP_AUTH, pipeline
from bench.worker_bench import tenant_id

LIMITS = (50, 100, 150, 200)
REPORT_INTERVAL = 1.0
DENY_STATUSES = frozenset({"exhausted", "blocked"})


def limit_of(t: int) -> int:
    return LIMITS[t % len(LIMITS)]


def tenants() -> list[Any]:
    """N_TENANTS tenants served in eu and us, with a plan `basic` of 50..200 units."""
    from pydantic import SecretStr

    from tables.tenant import PlanEntry, Tenant, WebhookSecret

    return [
        Tenant(
            id=tenant_id(i),
            webhook_secrets=(WebhookSecret(id="s1", secret=SecretStr(secret(i))),),
            regions=("eu", "us"),
            plans={"basic": PlanEntry(quota=limit_of(i))},
        )
        for i in range(N_TENANTS)
    ]


# --- the instrumented edge node (its own process) --------------------------------------


def edge_node(region: str, port: int, out: str) -> None:
    """`quotaflow edge` with a cache that records every applied update and allowed consume.

    Tap lines: `u KEY VERSION STATUS UPDATED_AT APPLIED_AT LOCAL_REMAINING` (the node's
    remaining after applying, its own unreported consumption deducted) and
    `a KEY REMAINING AT`.
    """
    from edge.cache import Decision, QuotaCache
    from edge.server import serve
    from edge.settings import EdgeSettings
    from quotaflow.logs import setup_logging
    from quotaflow.runner import run_until_signalled
    from tables.quota import QuotaUpdate

    tap = Path(out).open("a", buffering=1)  # noqa: SIM115 - closed at exit below

    class TapCache(QuotaCache):
        def apply(self, update: QuotaUpdate, region: str = "") -> bool:
            applied = super().apply(update, region)
            if applied:
                at = time.time()
                doc = self.get(update.tenant_id, update.customer_id) or {}
                tap.write(
                    f"u {update.tenant_id}/{update.customer_id} {update.version} "
                    f"{update.status} {update.updated_at:.6f} {at:.6f} {doc.get('remaining')}\n"
                )
            return applied

        def consume(
            self, tenant_id: str, customer_id: str, cost: int = 1, feature: str | None = None
        ) -> Decision:
            decision = super().consume(tenant_id, customer_id, cost, feature)
            if decision.allowed:
                tap.write(f"a {tenant_id}/{customer_id} {decision.remaining} {time.time():.6f}\n")
            return decision

    settings = EdgeSettings(region=region, edge_port=port)
    setup_logging(settings.log_level)
    try:
        run_until_signalled(lambda stop: serve(settings, stop, cache=TapCache(regions=(region,))))
    finally:
        tap.close()


@dataclass
class NodeTap:
    """One node's records, per customer key."""

    updates: dict[str, list[tuple[str, float, float, int | None]]] = field(default_factory=dict)
    allowed: dict[str, list[tuple[float, int]]] = field(default_factory=dict)


def read_tap(path: Path) -> NodeTap:
    tap = NodeTap()
    if not path.exists():
        return tap
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[0] == "u":
            local = None if parts[6] == "None" else int(parts[6])
            tap.updates.setdefault(parts[1], []).append(
                (parts[3], float(parts[4]), float(parts[5]), local)
            )
        elif len(parts) == 4 and parts[0] == "a":
            tap.allowed.setdefault(parts[1], []).append((float(parts[3]), int(parts[2])))
    return tap


# --- customers and load ----------------------------------------------------------------


@dataclass
class Customer:
    key: str
    limit: int
    nodes: tuple[int, ...]
    client_allowed: int = 0
    denied_by: set[int] = field(default_factory=set)
    errors: int = 0
    gave_up: bool = False
    lateness: list[float] = field(default_factory=list)


async def create_customers(ingress_port: int, hooks: Webhooks, count: int, tag: str) -> list[str]:
    """Subscribes `count` new customers through the ingress; their keys."""
    batch = hooks.make(count, tag)
    sent, statuses, _ = await drive(ingress_port, batch, 100.0)
    if len(sent) != len(batch):
        raise RuntimeError(f"customer webhooks not all accepted: {statuses}")
    return [key for _, key, _, _ in batch]


async def wait_known(taps: Sequence[Path], keys: Sequence[str], timeout: float) -> None:
    """Until every node applied every customer's first quota."""
    deadline = time.monotonic() + timeout
    while True:
        seen = [read_tap(p).updates for p in taps]
        missing = sum(1 for s in seen for k in keys if k not in s)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{missing} customer quotas never reached the edge nodes")
        await asyncio.sleep(0.25)


async def load(
    urls: Sequence[str], customers: Sequence[Customer], rate: float, spread: float, give_up: float
) -> float:
    """Drives every customer open loop at `rate`, starts spread over `spread` seconds.

    Returns the client's CPU seconds per second of load (it must not be the bottleneck).
    """
    import aiohttp

    connector = aiohttp.TCPConnector(limit=400)
    timeout = aiohttp.ClientTimeout(total=10)
    cpu0, wall0 = time.process_time(), time.monotonic()
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=APP_AUTH
    ) as session:

        async def one(c: Customer, node: int) -> None:
            tenant, customer = c.key.split("/", 1)
            body = orjson.dumps({"tenant_id": tenant, "customer_id": customer, "cost": 1})
            try:
                async with session.post(f"{urls[node]}/v1/consume", data=body) as response:
                    doc = orjson.loads(await response.read())
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                c.errors += 1
                return
            if doc.get("allowed"):
                c.client_allowed += 1
            else:
                c.denied_by.add(node)

        async def customer(c: Customer, start: float) -> None:
            tasks: list[asyncio.Task[None]] = []
            extra: int | None = None
            j = 0
            due = start
            while True:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Paced, not caught up: after a stall of this (shared, loaded) client the
                # next call waits a full gap again, so no customer ever calls faster than
                # `rate` and the overshoot can be held against rate x lag.
                now = time.monotonic()
                c.lateness.append(max(0.0, now - due))
                due = max(due, now) + 1 / rate
                tasks.append(asyncio.create_task(one(c, c.nodes[j % len(c.nodes)])))
                j += 1
                if extra is None and c.denied_by >= set(c.nodes):
                    extra = len(c.nodes)  # one more round: does any node re-open?
                if extra is not None:
                    extra -= 1
                    if extra <= 0:
                        break
                if j > c.limit + rate * give_up:
                    c.gave_up = True
                    break
            await asyncio.gather(*tasks)

        # Random starts: evenly spaced ones would put every crossing at a few fixed
        # phases of the nodes' report ticks, and the lag depends on that phase.
        rng = random.Random(len(customers))
        t0 = time.monotonic() + 0.05
        await asyncio.gather(*(customer(c, t0 + rng.uniform(0, spread)) for c in customers))
    return (time.process_time() - cpu0) / max(1e-9, time.monotonic() - wall0)


# --- analysis --------------------------------------------------------------------------


def denied_since(tap: NodeTap, key: str) -> float | None:
    """The moment from which this node denied the customer for good (None: never)."""
    pushed = tap.updates.get(key, [])
    push = next((t for status, _, t, _ in pushed if status in DENY_STATUSES), None)
    allowed = tap.allowed.get(key, [])
    if allowed and allowed[-1][1] == 0:
        last = allowed[-1][0]
        # A push applied after it re-opened the node if it left `remaining` above 0: a
        # push resets it from the core's view, which lacks units still on their way.
        reopened = any(
            t > last and status not in DENY_STATUSES and (local is None or local > 0)
            for status, _, t, local in pushed
        )
        if not reopened:
            return last if push is None else min(last, push)
    return push


def analyse(customers: Sequence[Customer], taps: Sequence[NodeTap], rate: float) -> dict[str, Any]:
    lag, push_lag, core_lag, overshoot, fraction, bound = [], [], [], [], [], []
    per_node: dict[str, list[float]] = {name: [] for _, name in NODES}
    over_bound = not_enforced = mismatched = excess = 0
    for c in customers:
        grants = sorted(t for n in c.nodes for t, _ in taps[n].allowed.get(c.key, []))
        if sum(len(taps[n].allowed.get(c.key, [])) for n in range(len(taps))) != c.client_allowed:
            mismatched += 1
        if len(grants) < c.limit:
            not_enforced += 1
            continue
        crossing = grants[c.limit - 1]
        onsets = [denied_since(taps[n], c.key) for n in c.nodes]
        if any(o is None for o in onsets) or c.gave_up:
            not_enforced += 1
            continue
        worst = max(o for o in onsets if o is not None) - crossing
        lag.append(worst * 1000)
        for n, o in zip(c.nodes, onsets, strict=True):
            if o is not None:
                per_node[NODES[n][1]].append((o - crossing) * 1000)
        pushes = [
            next(
                ((u, a) for s, u, a, _ in taps[n].updates.get(c.key, []) if s in DENY_STATUSES),
                None,
            )
            for n in c.nodes
        ]
        if all(p is not None for p in pushes):
            push_lag.append((max(p[1] for p in pushes if p) - crossing) * 1000)
            core_lag.append((min(p[0] for p in pushes if p) - crossing) * 1000)
        over = len(grants) - c.limit
        overshoot.append(over)
        fraction.append(over / c.limit)
        bound.append(rate * max(0.0, worst))
        # Discrete calls: within a lag of L at most floor(rate * L) + 1 more can be granted.
        beyond = over - (math.floor(rate * max(0.0, worst)) + 1)
        if beyond > 0:
            over_bound += 1
            excess = max(excess, beyond)
    p99_lag_s = summary(lag).get("p99", math.nan) / 1000
    return {
        "customers": len(customers),
        "measured": len(lag),
        "not_enforced": not_enforced,
        "client_node_count_mismatch": mismatched,
        "client_errors": sum(c.errors for c in customers),
        "crossing_to_denied_all_nodes_ms": summary(lag),
        "crossing_to_denied_per_node_ms": {k: summary(v) for k, v in per_node.items() if v},
        "crossing_to_exhausted_push_applied_all_nodes_ms": summary(push_lag),
        "crossing_to_core_published_exhausted_ms": summary(core_lag),
        "overshoot_units": summary(overshoot, unit="units"),
        "overshoot_fraction_of_limit": summary(fraction, 4, unit="fraction"),
        "bound_rate_x_lag_units": summary(bound, unit="units"),
        "bound_rate_x_p99_lag_units": round(rate * p99_lag_s, 1),
        "customers_over_bound": over_bound,
        "client_send_lateness_ms": summary(late * 1000 for c in customers for late in c.lateness),
        "max_units_over_bound": excess,
    }


# --- the run ---------------------------------------------------------------------------


async def phase(
    name: str,
    stack_urls: Sequence[str],
    taps: Sequence[Path],
    customers: list[Customer],
    args: argparse.Namespace,
    spread: float,
) -> dict[str, Any]:
    progress(f"{name}: {len(customers)} customers at {args.rate}/s over {spread}s")
    client_cores = await load(stack_urls, customers, args.rate, spread, args.give_up)
    # A customer stops being driven once every node denies it, which may be before its
    # `exhausted` push lands (a node that ran out locally): give that push time to arrive.
    await asyncio.sleep(2 * REPORT_INTERVAL + 0.5)
    result = analyse(customers, [read_tap(p) for p in taps], args.rate)
    result["client_cores"] = round(client_cores, 2)
    result["nodes"] = sorted({NODES[n][1] for c in customers for n in c.nodes})
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report = Report("enforcement", vars(args))
    with bench_workspace(report, "enforce", args.keep) as (bootstrap, work):
        with pipeline(
            bootstrap=bootstrap,
            work=work,
            tenants=tenants(),
            nodes=NODES,
            edge_module="bench.enforcement_bench",
            store=args.store,
            env={"QUOTAFLOW_USAGE_REPORT_INTERVAL": str(REPORT_INTERVAL)},
        ) as stack:
            samplers = {name: ProcSampler(p.pid) for name, p in stack.procs.items()}
            for sampler in samplers.values():
                sampler.__enter__()
            try:
                now = int(time.time())
                hooks = Webhooks(period=(now - 86_400, now + 29 * 86_400))
                total = args.warmup + args.customers + args.single
                # Quick runs keep to the small limits so they cross within a second or two.
                need = total * (2 if args.quick else 1)
                progress(f"subscribing {need} customers")
                keys = await create_customers(stack.ingress_port, hooks, need, "enf")
                await wait_known(stack.taps, keys, 60.0)
                picked = [
                    (k, limit_of(int(k[2:8])))
                    for k in keys
                    if not args.quick or limit_of(int(k[2:8])) <= 100
                ][:total]
                all3 = tuple(range(len(NODES)))

                def group(lo: int, hi: int, nodes: tuple[int, ...]) -> list[Customer]:
                    return [Customer(k, lim, nodes) for k, lim in picked[lo:hi]]

                warm = group(0, args.warmup, all3)
                main = group(args.warmup, args.warmup + args.customers, all3)
                single = group(args.warmup + args.customers, total, (0,))
                urls = [stack.node_url(i) for i in range(len(NODES))]
                report["warmup"] = await phase(
                    "warm-up", urls, stack.taps, warm, args, min(args.spread, 2.0)
                )
                for sampler in samplers.values():
                    sampler.mark()
                report["three_nodes"] = await phase(
                    "3 nodes", urls, stack.taps, main, args, args.spread
                )
                report["cpu_cores"] = {n: s.window()["cpu_cores"] for n, s in samplers.items()}
                report["baseline_single_node"] = await phase(
                    "1 node (baseline)", urls, stack.taps, single, args, args.spread_single
                )
            finally:
                for sampler in samplers.values():
                    sampler.__exit__()
            stack.check()
        report["report_interval_s"] = REPORT_INTERVAL
        report["targets"] = {"crossing_to_denied_all_nodes_p99_ms": 2000}
    report.emit()
    return report.doc


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["edge-node"]:
        edge_node(argv[1], int(argv[2]), argv[3])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--customers", type=int, default=150, help="customers on 3 nodes")
    parser.add_argument("--single", type=int, default=40, help="baseline customers on 1 node")
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--rate", type=float, default=20.0, help="units/s per customer")
    parser.add_argument(
        "--spread", type=float, default=60.0, help="seconds over which starts spread"
    )
    parser.add_argument("--spread-single", type=float, default=20.0)
    parser.add_argument(
        "--give-up", type=float, default=15.0,
        help="stop a customer this many seconds' worth of calls past its limit",
    )  # fmt: skip
    parser.add_argument("--store", default="rocksdb://")
    parser.add_argument("--keep", metavar="DIR", help="keep logs and taps in DIR")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.customers, args.single, args.warmup = 9, 3, 2
        args.rate, args.spread, args.spread_single = 50.0, 2.0, 1.0
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
