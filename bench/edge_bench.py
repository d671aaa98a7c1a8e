"""Edge benchmark: in-process `check()` latency and HTTP `consume` latency on localhost.

Run: `.venv/bin/python -m bench.edge_bench [--quick] [--rounds N]` (prints JSON).
`--quick` runs tiny sizes (a smoke test: the figures mean nothing).

1. `QuotaCache.check()` over 1M calls on 10,000 customers: throughput from batches timed
   with perf_counter_ns, and per-call p50/p99 from individually timed samples (timer
   overhead measured and reported beside them). Beside it, the baseline a team would
   write: a dict of pydantic `QuotaUpdate` models keyed `tenant/customer`, answering with
   a dict. Then the same with features and rate limits on (`*_rate_feature`): every
   customer has a `rate_per_second` (high enough that no call is denied, so each call
   takes the whole bucket path: clock read, refill, spend) and two features, and each
   call names one. And with per-feature quotas (`*_metered_feature`): the same plus two
   named metered features, each with its own quota and bucket, every call naming one.
2. `POST /v1/consume` on a sidecar in a child process, driven open-loop at 2,000 req/s
   by openloop (bench/openloop.c, through bench/loadgen.py) over 16 keep-alive
   connections; p50/p99/max latency from each request's intended send time
   (`from_write_*`: from the request's actual write). `http_consume_vegeta` is the same
   load as `http_consume` from vegeta, the client these figures came from before (its own
   CPU, twice the sidecar's, shares the 2 cores: kept so old and new figures compare
   within one run). The same load runs in the same run, alternately (`--rounds` times
   each, on a fresh server each time), in these modes: `http_consume` with
   authentication as deployed (a bearer token on every request, hashed and compared by
   the edge), `http_consume_loopback` without a token (the edge lets loopback in,
   `QUOTAFLOW_EDGE_ALLOW_LOOPBACK`: what the edge cost before authentication), and
   `http_consume_idempotency_key` (a token and a fresh `Idempotency-Key` on every
   request: the cost of remembering each answer). `http_auth_cost` gives the ratios
   authenticated / loopback (1.0 = free). `http_consume_aiohttp` is `http_consume`
   against a sidecar served by aiohttp alone on asyncio's loop, as before the light face
   for the hot routes (`edge/fastpath.py`) and uvloop, which `quotaflow edge` now runs on
   (the other modes); `http_light_face_gain` gives the ratios light face / aiohttp alone
   (p50, p99, server CPU per request). Each mode also gives
   `server_cpu_us_per_request`, the sidecar's CPU time (user + system, from /proc) over
   the requests it answered: on a shared machine latency moves with everyone else's
   load, the CPU a request costs the server much less. `machine_wakeup` is how long the
   machine takes to wake a process on the same CPU and across CPUs (bench/common.py
   `wakeup_latency`); `--one-cpu` runs everything on one CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import orjson
import uvloop
from aiohttp import web

from bench import loadgen
from bench.common import cdf, confine_to_one_cpu, wakeup_latency
from edge.auth import AppAuth, generate_app_token, token_digest
from edge.cache import QuotaCache
from edge.fastpath import EdgeRunner
from edge.server import build_app
from tables.quota import FeatureQuota, QuotaUpdate, Reason, quota_key
from wire import Kind, Verifier, generate_keypair

CUSTOMERS = 10_000
CALLS = 1_000_000
SAMPLES = 200_000
HTTP_RATE = 2_000
HTTP_SECONDS = 10.0
CONNECTIONS = 16
WARMUP = 500
TOKEN = generate_app_token()
# mode -> (whether the client sends the token, whether it sends an Idempotency-Key, the
# load client, whether the sidecar serves with aiohttp alone rather than with the light
# face for the hot routes)
MODES: dict[str, tuple[bool, bool, loadgen.Client, bool]] = {
    "http_consume": (True, False, "openloop", False),
    "http_consume_loopback": (False, False, "openloop", False),
    "http_consume_idempotency_key": (True, True, "openloop", False),
    "http_consume_vegeta": (True, False, "vegeta", False),
    "http_consume_aiohttp": (True, False, "openloop", True),
}


def _updates(
    limit: int,
    rate: float | None = None,
    features: tuple[str, ...] = (),
    metered: tuple[str, ...] = (),
) -> list[QuotaUpdate]:
    return [
        QuotaUpdate(
            tenant_id=f"t{i % 100}",
            customer_id=f"c{i}",
            limit=limit,
            used=0,
            remaining=limit,
            status="active",
            version=1,
            reason=Reason(kind="policy", id="bench"),
            updated_at=0.0,
            rate_per_second=rate,
            features=features,
            metered={
                name: FeatureQuota(limit=limit, used=0, remaining=limit, rate_per_second=rate)
                for name in metered
            },
        )
        for i in range(CUSTOMERS)
    ]


class BaselineCache:
    """What a team would write: pydantic models in a dict, a dict per answer."""

    def __init__(self) -> None:
        self.quotas: dict[str, QuotaUpdate] = {}

    def apply(self, update: QuotaUpdate) -> None:
        held = self.quotas.get(update.key)
        if held is None or update.version > held.version:
            self.quotas[update.key] = update

    def check(self, tenant_id: str, customer_id: str, cost: int = 1) -> dict[str, Any]:
        quota = self.quotas.get(quota_key(tenant_id, customer_id))
        if quota is None:
            return {"allowed": False, "remaining": None, "reason": "unknown_customer"}
        if quota.status in ("blocked", "exhausted"):
            return {"allowed": False, "remaining": 0, "reason": quota.status}
        if quota.remaining is None:
            return {"allowed": True, "remaining": None, "reason": "ok"}
        allowed = quota.remaining >= cost
        return {
            "allowed": allowed,
            "remaining": quota.remaining - cost if allowed else quota.remaining,
            "reason": "ok" if allowed else "insufficient",
        }

    def consume(self, tenant_id: str, customer_id: str, cost: int = 1) -> dict[str, Any]:
        answer = self.check(tenant_id, customer_id, cost)
        if answer["allowed"] and answer["remaining"] is not None:
            key = quota_key(tenant_id, customer_id)
            quota = self.quotas[key]
            self.quotas[key] = quota.model_copy(
                update={"used": quota.used + cost, "remaining": answer["remaining"]}
            )
        return answer


def _percentile(sorted_values: list[int], q: float) -> float:
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def _measure(
    check: Callable[..., object],
    keys: list[tuple[str, str]],
    calls: int = CALLS,
    samples_n: int = SAMPLES,
    feature: str | None = None,
) -> dict[str, Any]:
    """`check(tenant, customer, 1)`, or `check(tenant, customer, 1, feature)` if given (the
    loops are duplicated so that neither pays for the other's call shape)."""
    n = len(keys)
    clock = time.perf_counter_ns
    # Throughput: batches of 1,000 calls, one clock read per batch.
    batch_ns: list[int] = []
    for start in range(0, calls, 1000):
        chunk = [keys[(start + j) % n] for j in range(1000)]
        if feature is None:
            t0 = clock()
            for tenant, customer in chunk:
                check(tenant, customer, 1)
        else:
            t0 = clock()
            for tenant, customer in chunk:
                check(tenant, customer, 1, feature)
        batch_ns.append(clock() - t0)
    # Latency: every call timed on its own (includes one clock read's overhead).
    samples: list[int] = []
    for i in range(samples_n):
        tenant, customer = keys[i % n]
        if feature is None:
            t0 = clock()
            check(tenant, customer, 1)
        else:
            t0 = clock()
            check(tenant, customer, 1, feature)
        samples.append(clock() - t0)
    samples.sort()
    per_call = sorted(b / 1000 for b in batch_ns)
    return {
        "calls": calls,
        "mean_us": round(sum(batch_ns) / calls / 1000, 3),
        "batch_p50_us_per_call": round(statistics.median(per_call) / 1000, 3),
        "calls_per_second": round(calls / (sum(batch_ns) / 1e9)),
        "p50_us": round(_percentile(samples, 0.50) / 1000, 3),
        "p99_us": round(_percentile(samples, 0.99) / 1000, 3),
        "p999_us": round(_percentile(samples, 0.999) / 1000, 3),
        "max_us": round(samples[-1] / 1000, 3),
        "cdf": cdf(samples, "us", 1e-3),
    }


def _timer_overhead_us() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(100_000):
        t0 = clock()
        samples.append(clock() - t0)
    samples.sort()
    return round(_percentile(samples, 0.5) / 1000, 3)


def bench_check(calls: int = CALLS, samples: int = SAMPLES) -> dict[str, Any]:
    updates = _updates(limit=10**12)
    cache = QuotaCache(regions=("bench",))
    baseline = BaselineCache()
    for u in updates:
        cache.apply(u, "bench")
        baseline.apply(u)
    keys = [(u.tenant_id, u.customer_id) for u in updates]
    random.Random(7).shuffle(keys)
    # Features and rate limits on: a rate no call reaches (each call still reads the clock,
    # refills and spends a token), two features, and every call names one of them.
    limited = QuotaCache(regions=("bench",))
    for u in _updates(limit=10**12, rate=1e9, features=("bulk", "export")):
        limited.apply(u, "bench")
    # Per-feature quotas on: two named metered features (own quota and bucket each) beside
    # the boolean ones, and every call names a metered one (its own meter and bucket).
    metered = QuotaCache(regions=("bench",))
    for u in _updates(
        limit=10**12, rate=1e9, features=("bulk", "export"), metered=("calls", "exports")
    ):
        metered.apply(u, "bench")
    return {
        "timer_overhead_p50_us": _timer_overhead_us(),
        "quotaflow_check": _measure(cache.check, keys, calls, samples),
        "quotaflow_check_rate_feature": _measure(limited.check, keys, calls, samples, "bulk"),
        "baseline_pydantic_dict_check": _measure(baseline.check, keys, calls, samples),
        "quotaflow_consume": _measure(cache.consume, keys, calls, samples),
        "quotaflow_consume_rate_feature": _measure(limited.consume, keys, calls, samples, "bulk"),
        "quotaflow_check_metered_feature": _measure(metered.check, keys, calls, samples, "exports"),
        "quotaflow_consume_metered_feature": _measure(
            metered.consume, keys, calls, samples, "exports"
        ),
        "baseline_pydantic_dict_consume": _measure(baseline.consume, keys, calls, samples),
    }


# -- HTTP --------------------------------------------------------------------------


def _serve(port: int, ready: Connection, digest: str, loopback: bool, aiohttp_only: bool) -> None:
    async def main() -> None:
        cache = QuotaCache(regions=("bench",))
        for u in _updates(limit=10**12):
            cache.apply(u, "bench")
        # As `quotaflow edge` builds it: one application's digest, loopback let in or not.
        auth = AppAuth({"bench": digest}, allow_loopback=loopback)
        verifier = Verifier(Kind.PUSH, [generate_keypair()[1]])
        # As `quotaflow edge` serves it (EdgeRunner: the light face for the hot routes, on
        # uvloop), or with aiohttp alone on asyncio's loop, as before the light face (the
        # `http_consume_aiohttp` mode).
        runner_class = web.AppRunner if aiohttp_only else EdgeRunner
        runner = runner_class(
            build_app(cache, verifier, region="bench", auth=auth),
            access_log=None,
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.send(os.getpid())
        await asyncio.Event().wait()

    # Before the light face the sidecar ran on asyncio's loop; `quotaflow edge` now runs
    # on uvloop.
    if aiohttp_only:
        asyncio.run(main())
    else:
        uvloop.run(main())


def _drive(
    port: int, seconds: float, token: bool, keys: bool, client: loadgen.Client
) -> dict[str, Any]:
    """The load of one round: samples are (from intended, from start)."""
    url = f"http://127.0.0.1:{port}/v1/consume"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {TOKEN}"
    run = os.urandom(4).hex()
    total = int(HTTP_RATE * seconds)

    def request(i: int) -> loadgen.Request:
        extra = {"Idempotency-Key": f"{run}-{i:032d}"} if keys else {}
        body = orjson.dumps(
            {"tenant_id": f"t{i % 100}", "customer_id": f"c{i % CUSTOMERS}", "cost": 1}
        )
        return loadgen.Request("POST", url, headers | extra, body)

    allowed = b'"allowed":true'
    # vegeta cycles through its targets: with keys, one target per request (fresh keys).
    loadgen.attack(
        [request(-i - 1) for i in range(WARMUP)],
        HTTP_RATE,
        WARMUP / HTTP_RATE,
        CONNECTIONS,
        client=client,
    )
    got = loadgen.attack(
        [request(i) for i in range(total if keys else CUSTOMERS)],
        HTTP_RATE,
        seconds,
        CONNECTIONS,
        expect=allowed,
        client=client,
    )
    return {
        "requests": len(got.from_intended),
        "elapsed": got.elapsed,
        "samples": list(zip(got.from_intended, got.from_start, strict=True)),
        "sent": WARMUP + len(got.from_intended),
    } | ({"vegeta_report": loadgen.report_ms(got.report)} if client == "vegeta" else {})


def _figures(runs: list[dict[str, Any]], client: str) -> dict[str, Any]:
    """One mode's figures over all its rounds' samples, and each round's p99."""
    out = [sample for r in runs for sample in r["samples"]]
    elapsed = sum(r["elapsed"] for r in runs)
    cpu = [r["server_cpu_seconds"] / r["sent"] for r in runs if "server_cpu_seconds" in r]
    # From the scheduled send time (counts queueing in the client: no coordinated omission)
    # and from the actual write (the server's share).
    scheduled_ns = sorted(int(a * 1e9) for a, _ in out)
    sent_ns = sorted(int(b * 1e9) for _, b in out)
    return {
        "client": client,
        "target_rps": HTTP_RATE,
        "achieved_rps": round(len(out) / elapsed),
        "requests": len(out),
        "connections": CONNECTIONS,
        "rounds": len(runs),
        "round_p99_ms": [
            round(_percentile(sorted(int(a * 1e9) for a, _ in r["samples"]), 0.99) / 1e6, 3)
            for r in runs
        ],
        "p50_ms": round(_percentile(scheduled_ns, 0.50) / 1e6, 3),
        "p99_ms": round(_percentile(scheduled_ns, 0.99) / 1e6, 3),
        "max_ms": round(scheduled_ns[-1] / 1e6, 3),
        "from_write_p50_ms": round(_percentile(sent_ns, 0.50) / 1e6, 3),
        "from_write_p99_ms": round(_percentile(sent_ns, 0.99) / 1e6, 3),
        "server_cpu_us_per_request": round(statistics.mean(cpu) * 1e6, 1) if cpu else None,
        "cdf": cdf(scheduled_ns, "ms", 1e-6),
        "from_write_cdf": cdf(sent_ns, "ms", 1e-6),
    } | (
        {"vegeta_report": [r["vegeta_report"] for r in runs]} if "vegeta_report" in runs[0] else {}
    )


def _cpu_seconds(pid: int) -> float | None:
    """A process's CPU time so far (user + system, from /proc), or None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _http_round(
    seconds: float, token: bool, keys: bool, client: loadgen.Client, aiohttp_only: bool
) -> dict[str, Any]:
    """One mode's load against a fresh sidecar process (loopback let in iff no token)."""
    from quotaflow.commands.localkafka import free_port

    port = free_port()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    # The digest travels: a spawned child re-imports this module and would draw a new TOKEN.
    args = (port, child, token_digest(TOKEN), not token, aiohttp_only)
    server = ctx.Process(target=_serve, args=args, daemon=True)
    server.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("edge server did not start")
        parent.recv()
        # The sidecar's CPU per request (warm-up included in both counts) says what the
        # server spends whatever else holds the cores, which latency on a shared machine
        # does not.
        before = _cpu_seconds(server.pid) if server.pid is not None else None
        result = _drive(port, seconds, token, keys, client)
        after = _cpu_seconds(server.pid) if server.pid is not None else None
        if before is not None and after is not None:
            result["server_cpu_seconds"] = after - before
        return result
    finally:
        server.terminate()
        server.join(10)


def bench_http(seconds: float = HTTP_SECONDS, rounds: int = 2) -> dict[str, Any]:
    """Every mode, alternating round by round so a change in the machine's load falls on
    all of them alike; the ratios compare the modes within this run."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode, (token, keys, client, aiohttp_only) in MODES.items():
            runs[mode].append(_http_round(seconds, token, keys, client, aiohttp_only))
    result: dict[str, Any] = {
        mode: _figures(r, loadgen.client_name(MODES[mode][2])) for mode, r in runs.items()
    }
    authed, open_ = result["http_consume"], result["http_consume_loopback"]
    keyed = result["http_consume_idempotency_key"]
    result["http_auth_cost"] = {
        f"{name}_ratio": round(authed[name] / open_[name], 3) if open_[name] else None
        for name in ("p50_ms", "p99_ms", "from_write_p50_ms", "from_write_p99_ms")
    } | {
        f"idempotency_key_{name}_ratio": round(keyed[name] / open_[name], 3)
        if open_[name]
        else None
        for name in ("p50_ms", "p99_ms")
    }
    # The light face against aiohttp alone, same load, same run (< 1: the light face is
    # faster or cheaper).
    plain = result["http_consume_aiohttp"]
    result["http_light_face_gain"] = {
        f"{name}_ratio": round(authed[name] / plain[name], 3) if plain.get(name) else None
        for name in ("p50_ms", "p99_ms", "from_write_p99_ms", "server_cpu_us_per_request")
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--rounds", type=int, default=2, help="HTTP rounds per mode")
    parser.add_argument(
        "--one-cpu",
        action="store_true",
        help="Linux: the bench, its load clients and every sidecar on one CPU, so no "
        "request waits for the host to wake a second vCPU (see machine_wakeup)",
    )
    args = parser.parse_args()
    loadgen.vegeta()  # a missing load generator fails before anything is measured
    loadgen.openloop()
    # Before the confinement: both placements measured (a smoke test needs few trips).
    wakeup = wakeup_latency(500 if args.quick else 5_000)
    if args.one_cpu:
        confine_to_one_cpu()
    calls, samples = (20_000, 5_000) if args.quick else (CALLS, SAMPLES)
    seconds = 1.0 if args.quick else HTTP_SECONDS
    rounds = 1 if args.quick else args.rounds
    result = {
        "check": bench_check(calls, samples),
        **bench_http(seconds, rounds),
        "quick": args.quick,
        "one_cpu": args.one_cpu,
        "cpus": os.cpu_count(),
        "machine_wakeup": wakeup,
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
