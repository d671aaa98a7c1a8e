"""End-to-end benchmark: a signed webhook POSTed at the ingress to the quota applied at the
edge, with 3 edge nodes in 2 regions (eu: 2 nodes, us: 1), a pusher per region, all real
processes on this machine.

Run: `.venv/bin/python -m bench.e2e_bench [--rates 200,1000] [--seconds 15]
[--worker-env KEY=VALUE ...] [--quick]`. Prints one JSON document.

Processes: `quotaflow ingress`, `quotaflow worker` (snapshot mode, rocksdb://),
`quotaflow push --region eu|us`, and three edge nodes. An edge node here is the edge
sidecar's own `edge.server.serve` with a `QuotaCache` subclass that appends
`key version updated_at applied_at` to a file whenever an update is applied (the
`edge-node` verb below); nothing else differs from `quotaflow edge`.

The load is open loop: webhook i is due at start + i/rate and its latency counts from that
due time, so a client or server that falls behind is charged for it. Every webhook is a
`customer.subscription.created` for a new customer of one of 30 tenants (served in eu, us
or both), so each yields exactly one quota update per serving node. One wall clock
(CLOCK_REALTIME, shared by the processes) gives the hops:
- ingress: due time -> 200 (the broker acknowledged, acks=all);
- to worker: due time -> the worker's `updated_at` (ingress, Kafka fetch, apply);
- worker to edge: `updated_at` -> applied at the node (produce, pusher fetch, push);
- total: due time -> applied at the node; `all_nodes`: the slowest serving node per event.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.common import ProcSampler, Report, bench_workspace, progress, summary
from bench.stack import pipeline
from bench.worker_bench import WorkerTuning, add_tuning_flags

N_TENANTS = 30
REGIONS = (("eu",), ("us",), ("eu", "us"))
NODES = (("eu", "eu-1"), ("eu", "eu-2"), ("us", "us-1"))
BASE_TIME = 1_760_000_000


# --- the instrumented edge node (its own process) --------------------------------------


def edge_node(region: str, port: int, out: str) -> None:
    """`quotaflow edge` with a cache that records when each update is applied."""
    from edge.cache import QuotaCache
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
                tap.write(
                    f"{update.tenant_id}/{update.customer_id} {update.version} "
                    f"{update.updated_at:.6f} {time.time():.6f}\n"
                )
            return applied

    settings = EdgeSettings(region=region, edge_port=port)
    setup_logging(settings.log_level)
    try:
        run_until_signalled(lambda stop: serve(settings, stop, cache=TapCache(regions=(region,))))
    finally:
        tap.close()


def read_tap(path: Path) -> dict[str, tuple[float, float]]:
    """key -> (updated_at, applied_at) of the first apply of each key."""
    out: dict[str, tuple[float, float]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] not in out:
            out[parts[0]] = (float(parts[2]), float(parts[3]))
    return out


# --- tenants and webhooks --------------------------------------------------------------


def tenants() -> list[Any]:
    from bench.worker_bench import make_tenants

    return make_tenants(N_TENANTS, REGIONS)


def secret(i: int) -> str:
    return f"whsec_bench_{i:06d}"


class Webhooks:
    """Signed `customer.subscription.created` webhooks for new customers."""

    def __init__(self, period: tuple[int, int] = (BASE_TIME, BASE_TIME + 30 * 86_400)) -> None:
        from quotaflow.testing import stripe_objects as f

        self.f = f
        self.n = 0
        self.period = period
        self.price = f.Price("price_basic", "basic")

    def make(self, count: int, tag: str) -> list[tuple[int, str, bytes, str]]:
        """(tenant index, key, body, signature header) for `count` new customers."""
        f = self.f
        now = int(time.time())
        out = []
        for _ in range(count):
            self.n += 1
            t = self.n % N_TENANTS
            cus = f"cus_{tag}_{self.n}"
            sub = f.subscription(
                f"sub_{tag}_{self.n}", cus, "active", [(self.price, 1)],
                period=self.period,
            )  # fmt: skip
            body = orjson.dumps(
                f.event("customer.subscription.created", sub, event_id=f"evt_{tag}_{self.n}")
            )
            sig = hmac.new(secret(t).encode(), b"%d." % now + body, "sha256").hexdigest()
            out.append((t, f"bt{t:06d}/{cus}", body, f"t={now},v1={sig}"))
        return out


# --- load ------------------------------------------------------------------------------


async def drive(
    port: int, hooks: Sequence[tuple[int, str, bytes, str]], rate: float
) -> tuple[dict[str, tuple[float, float]], dict[str, int], float]:
    """Posts `hooks` open-loop at `rate`; key -> (due, answered), status counts, rate."""
    import aiohttp

    results: dict[str, tuple[float, float]] = {}
    statuses: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=200)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(t: int, key: str, body: bytes, sig: str, due: float) -> None:
            url = f"http://127.0.0.1:{port}/v1/webhooks/stripe/bt{t:06d}"
            try:
                async with session.post(
                    url,
                    data=body,
                    headers={"Stripe-Signature": sig, "Content-Type": "application/json"},
                ) as response:
                    await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            statuses[status] = statuses.get(status, 0) + 1
            if status == "200":
                results[key] = (due, time.time())

        tasks = []
        wall0, mono0 = time.time() + 0.05, time.monotonic() + 0.05
        for i, (t, key, body, sig) in enumerate(hooks):
            delay = mono0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(t, key, body, sig, wall0 + i / rate)))
        await asyncio.gather(*tasks)
        achieved = len(hooks) / max(1e-9, time.monotonic() - mono0)
    return results, statuses, achieved


def serving(t: int) -> list[int]:
    """Indexes into NODES of the nodes that serve tenant t."""
    regions = REGIONS[t % len(REGIONS)]
    return [i for i, (region, _) in enumerate(NODES) if region in regions]


async def wait_applied(
    taps: Sequence[Path], expected: Sequence[set[str]], timeout: float
) -> list[dict[str, tuple[float, float]]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = [read_tap(p) for p in taps]
        if all(exp <= s.keys() for exp, s in zip(expected, seen, strict=True)):
            return seen
        if time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.25)


async def phase(
    port: int,
    hooks: list[tuple[int, str, bytes, str]],
    rate: float,
    taps: Sequence[Path],
    samplers: dict[str, ProcSampler],
) -> dict[str, Any]:
    for sampler in samplers.values():
        sampler.mark()
    cpu0 = time.process_time()
    sent, statuses, achieved = await drive(port, hooks, rate)
    client_cpu = time.process_time() - cpu0
    expected: list[set[str]] = [set() for _ in NODES]
    for t, key, _, _ in hooks:
        if key in sent:
            for node in serving(t):
                expected[node].add(key)
    seen = await wait_applied(taps, expected, 30.0)
    usage = {name: s.window() for name, s in samplers.items()}
    ingress, to_worker, worker_edge, total, slowest = [], [], [], [], []
    per_node: dict[str, list[float]] = {name: [] for _, name in NODES}
    missing = 0
    for t, key, _, _ in hooks:
        if key not in sent:
            continue
        due, answered = sent[key]
        ingress.append((answered - due) * 1000)
        worst = 0.0
        for node in serving(t):
            hit = seen[node].get(key)
            if hit is None:
                missing += 1
                worst = float("inf")
                continue
            updated_at, applied = hit
            ms = (applied - due) * 1000
            total.append(ms)
            per_node[NODES[node][1]].append(ms)
            worker_edge.append((applied - updated_at) * 1000)
            worst = max(worst, ms)
        if hit is not None:
            to_worker.append((hit[0] - due) * 1000)
        if worst != float("inf"):
            slowest.append(worst)
    return {
        "rate_per_s": rate,
        "achieved_per_s": round(achieved, 1),
        "webhooks": len(hooks),
        "statuses": statuses,
        "missing_at_edges": missing,
        "webhook_to_edge_all_nodes_ms": summary(slowest),
        "webhook_to_edge_per_node_ms": {k: summary(v) for k, v in per_node.items()},
        "hops_ms": {
            "ingress_ack": summary(ingress),
            "due_to_worker_apply": summary(to_worker),
            "worker_apply_to_edge": summary(worker_edge),
        },
        "cpu_cores": {name: u["cpu_cores"] for name, u in usage.items()}
        | {"load_client": round(client_cpu / max(1e-9, len(hooks) / rate), 2)},
        "rss_mib": {name: u["rss_mib"] for name, u in usage.items()},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report = Report("e2e", vars(args))
    rates = [float(r) for r in args.rates.split(",") if r]
    worker_env = dict(item.partition("=")[::2] for item in args.worker_env)
    report["worker_env_overrides"] = args.worker_env
    with bench_workspace(report, "e2e", args.keep) as (bootstrap, work):
        with pipeline(
            bootstrap=bootstrap,
            work=work,
            tenants=tenants(),
            nodes=NODES,
            edge_module="bench.e2e_bench",
            store=args.store,
            worker_env=worker_env,
            tuning=WorkerTuning(None, args.switch_interval_ms),
        ) as stack:
            procs = stack.procs
            samplers = {name: ProcSampler(p.pid) for name, p in procs.items()}
            for sampler in samplers.values():
                sampler.__enter__()
            try:
                hooks = Webhooks()
                progress("warm-up (also waits for the worker's partitions)")
                warm = await phase(
                    stack.ingress_port, hooks.make(100, "warm"), 50, stack.taps, samplers
                )
                if warm["missing_at_edges"]:
                    progress(f"warm-up: {warm['missing_at_edges']} missing; waiting longer")
                    await asyncio.sleep(5)
                report["warmup_all_nodes_ms"] = warm["webhook_to_edge_all_nodes_ms"]
                results = []
                for rate in rates:
                    progress(f"{rate}/s for {args.seconds}s")
                    batch = hooks.make(int(rate * args.seconds), f"r{int(rate)}")
                    results.append(
                        await phase(stack.ingress_port, batch, rate, stack.taps, samplers)
                    )
                report["phases"] = results
            finally:
                for sampler in samplers.values():
                    sampler.__exit__()
            stack.check()
        report["targets"] = {"p99_ms_at_200_per_s": 25}
    report.emit()
    return report.doc


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["edge-node"]:
        edge_node(argv[1], int(argv[2]), argv[3])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rates", default="200,1000")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--store", default="rocksdb://")
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the worker only (e.g. QUOTAFLOW_COMMIT_INTERVAL=5)",
    )  # fmt: skip
    add_tuning_flags(parser)
    parser.add_argument("--keep", metavar="DIR", help="keep logs and taps in DIR")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.seconds = "200", 3.0
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
