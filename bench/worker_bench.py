"""Worker benchmark: billing events per second per `quotaflow worker` process, and the latency
from an event being in Kafka to its quota update being in `quota.updates`.

Run: `.venv/bin/python -m bench.worker_bench [--events 50000] [--stores memory,rocksdb]
[--rate 500] [--latency-seconds 20] [--profile FILE] [--quick]`. Prints one JSON document.

Per store (`memory://`, `rocksdb://`), on a private broker (or QUOTAFLOW_KAFKA_BOOTSTRAP):
1. `stripe.events` is pre-filled with realistic events (tests/tables/factories.py shapes,
   basil API version): many tenants x customers, each customer's lifecycle in order
   (customer.created, subscription created, then alternating quantity upgrades and paid
   top-up invoices), interleaved across customers as Stripe would deliver them. Every one
   of these events changes the quota, so N events give N quota updates.
2. Ceilings, same run, same topic, each its own process: a raw aiokafka consumer reads
   all N; a Faust worker whose agent does nothing reads all N (`bench.faust_noop`), per
   event and in batches (`take_events`), which is what Faust alone costs per event.
3. A real `quotaflow worker` process (QUOTAFLOW_STRIPE_FETCH=false: snapshot mode) starts;
   throughput = N / (last - first quota update), timestamps taken by the broker
   (both topics are created with `message.timestamp.type=LogAppendTime`, so one clock).
   The worker applies events in batches and publishes only a customer's newest version
   per batch, so it is done when every customer's record reached the version of its last
   event (the k-th event of a customer is version k), not after N records.
4. With the worker caught up, events are produced one by one at a fixed rate (500/s);
   latency per event = append time of the first quota record of its customer at or past
   its version - append time of the event
   (broker clock, 1 ms resolution), and `send_to_apply` = the worker's `updated_at`
   (its clock at apply, float) - the bench's clock just before `send()`.

`--profile FILE` runs the worker under cProfile (the `bench-worker` verb below: the same
code path as `quotaflow worker`, stats dumped on exit) and puts the top functions in the
JSON. `--switch-interval-ms N` runs the worker with the change described in
`WorkerTuning`, so its effect is measured without editing streams/ or quotaflow/.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    Proc,
    ProcSampler,
    Report,
    bench_workspace,
    create_topics,
    end_offsets_total,
    processes,
    progress,
    summary,
    unique,
)

PARTITIONS = 8
BASE_TIME = 1_760_000_000
PERIOD = (BASE_TIME, BASE_TIME + 30 * 86_400)
LOG_APPEND = {"message.timestamp.type": "LogAppendTime"}


# --- tenants and events ----------------------------------------------------------------


def tenant_id(i: int) -> str:
    return f"bt{i:06d}"


def make_tenants(n: int, regions: Sequence[Sequence[str]] = (("eu",),)) -> list[Any]:
    from pydantic import SecretStr

    from tables.tenant import PlanEntry, Tenant, WebhookSecret

    plans = {
        "basic": PlanEntry(quota=1000, rate_per_second=10, features=("api",)),
        "pro": PlanEntry(quota=10_000, features=("api", "bulk")),
        "prod_topup": PlanEntry(quota=500, topup=True),
    }
    return [
        Tenant(
            id=tenant_id(i),
            webhook_secrets=(WebhookSecret(id="s1", secret=SecretStr(f"whsec_bench_{i:06d}")),),
            regions=tuple(regions[i % len(regions)]),
            plans=plans,
        )
        for i in range(n)
    ]


def write_tenants(path: Path, tenants: Sequence[Any]) -> Path:
    from quotaflow.registry import dump_tenants

    path.write_bytes(dump_tenants(tenants))
    return path


class Workload:
    """Generates events whose every one changes its customer's quota (one update each).

    Step 0 of a customer is `customer.created`, step 1 `customer.subscription.created`,
    then odd steps pay a top-up invoice and even steps raise the quantity. `created` grows
    with every event, so the event snapshots always apply.
    """

    def __init__(self, n_tenants: int, customers_per_tenant: int, seed: int = 7) -> None:
        from quotaflow.testing import stripe_objects as f

        self.f = f
        self.n_tenants = n_tenants
        self.cpt = customers_per_tenant
        self.rng = random.Random(seed)
        self.steps: dict[tuple[int, int], int] = {}
        self.seq = 0
        self.basic = f.Price("price_basic", "basic")
        self.pro = f.Price("price_pro", "pro", product="prod_pro")
        self.topup = f.Price("price_topup", None, product="prod_topup")

    def event(self, t: int, c: int) -> tuple[str, str, bytes]:
        """(tenant id, event id, body) of customer (t, c)'s next event."""
        f = self.f
        step = self.steps.get((t, c), 0)
        self.steps[(t, c)] = step + 1
        self.seq += 1
        created = BASE_TIME + self.seq // 1000
        cus, sub = f"cus_{t}_{c}", f"sub_{t}_{c}"
        evt = f"evt_{t}_{c}_{step}_{self.seq}"
        if step == 0:
            ev = f.event("customer.created", f.customer(cus), created=created, event_id=evt)
        elif step % 2 == 0 or step == 1:
            items = [(self.basic, max(1, step))]
            if step % 4 == 0:
                items.append((self.pro, 1))
            obj = f.subscription(sub, cus, "active", items, period=PERIOD, created=BASE_TIME)
            kind = "created" if step == 1 else "updated"
            previous: dict[str, Any] | None = None if step == 1 else {"items": {"data": []}}
            ev = f.event(
                f"customer.subscription.{kind}", obj, created=created, event_id=evt,
                previous=previous,
            )  # fmt: skip
        else:
            inv = f.invoice(
                f"in_{t}_{c}_{step}", cus, subscription_id=sub, lines=[(self.topup, 1)],
                paid_at=BASE_TIME + 60,
            )  # fmt: skip
            ev = f.event("invoice.paid", inv, created=created, event_id=evt)
        return tenant_id(t), evt, orjson.dumps(ev)

    def mixed(self, n: int) -> list[tuple[str, str, bytes]]:
        """`n` events over random customers, each customer's own events in order."""
        return [
            self.event(self.rng.randrange(self.n_tenants), self.rng.randrange(self.cpt))
            for _ in range(n)
        ]


def headers(tenant: str, event_id: str, event_type: str) -> list[tuple[str, bytes]]:
    from quotaflow.envelope import Envelope

    return Envelope(
        tenant_id=tenant,
        event_id=event_id,
        event_type=event_type,
        livemode=False,
        received_at=time.time(),
        secret_id="s1",
    ).headers()


def event_type_of(body: bytes) -> str:
    # the type sits near the end of the factory's envelope; a full parse is cheap enough
    return str(orjson.loads(body)["type"])


async def produce_all(
    bootstrap: str, topic: str, events: Sequence[tuple[str, str, bytes]]
) -> float:
    """Produces events in order (key = tenant), batched; returns events/s."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 * 2**20,
    )
    async with asyncio.timeout(30):
        await producer.start()
    started = time.monotonic()
    try:
        pending = []
        for tenant, evt, body in events:
            pending.append(
                await producer.send(
                    topic,
                    body,
                    key=tenant.encode(),
                    headers=headers(tenant, evt, event_type_of(body)),
                )
            )
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(events) / max(1e-9, time.monotonic() - started)


async def read_topic(
    bootstrap: str,
    topic: str,
    start: dict[int, int] | None = None,
    timeout: float = 120.0,
    partitions: int = PARTITIONS,
) -> list[Any]:
    """Every record of `topic` from `start` offsets (default: beginning) to the end now."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 * 2**20
    )
    out: list[Any] = []
    async with asyncio.timeout(timeout):
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                consumer.seek(tp, (start or {}).get(tp.partition, 0))
            left = {tp for tp in tps if ends[tp] > (start or {}).get(tp.partition, 0)}
            while left:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for tp, records in batches.items():
                    out.extend(records)
                    if records and records[-1].offset + 1 >= ends[tp]:
                        left.discard(tp)
        finally:
            await consumer.stop()
    return out


async def partition_ends(bootstrap: str, topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    async with asyncio.timeout(15):
        await consumer.start()
        try:
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        finally:
            await consumer.stop()
    return {tp.partition: off for tp, off in ends.items()}


async def wait_records(
    bootstrap: str, topic: str, count: int, timeout: float, proc: Proc | None = None
) -> float:
    """Polls end offsets until `topic` holds `count` records; returns seconds waited."""
    started = time.monotonic()
    while True:
        if await end_offsets_total(bootstrap, topic) >= count:
            return time.monotonic() - started
        if proc is not None:
            proc.check()
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{topic} did not reach {count} records within {timeout}s")
        await asyncio.sleep(0.25)


def count_versions(evts: Iterable[str], counts: dict[str, int]) -> dict[str, int]:
    """Event id -> the version it publishes, counting on from `counts` (quota key -> events
    of that customer already in the topic), which it updates: every event changes the
    quota, so a customer's k-th event in a topic is version k."""
    out: dict[str, int] = {}
    for evt in evts:
        key = key_of(evt)
        counts[key] = counts.get(key, 0) + 1
        out[evt] = counts[key]
    return out


def key_of(evt: str) -> str:
    """`evt_{t}_{c}_{step}_{seq}` -> the quota key of its customer."""
    _, t, c, _step, _seq = evt.split("_")
    return f"{tenant_id(int(t))}/cus_{t}_{c}"


async def wait_versions(
    bootstrap: str,
    topic: str,
    wanted: dict[str, int],
    timeout: float,
    proc: Proc | None = None,
    start: dict[int, int] | None = None,
) -> tuple[float, list[Any]]:
    """Reads `topic` until every key of `wanted` reached its version (the worker publishes
    only the newest version of a customer per batch, so records != events); returns the
    seconds waited and every record read."""
    started = time.monotonic()
    offsets = dict(start or {})
    seen: dict[str, int] = {}
    records: list[Any] = []
    missing = dict(wanted)
    while missing:
        ends = await partition_ends(bootstrap, topic)
        if any(ends[p] > offsets.get(p, 0) for p in ends):
            batch = await read_topic(bootstrap, topic, offsets)
            for record in batch:
                offsets[record.partition] = record.offset + 1
                key = record.key.decode()
                version = orjson.loads(record.value)["version"]
                seen[key] = max(seen.get(key, 0), version)
                if key in missing and seen[key] >= missing[key]:
                    del missing[key]
            records.extend(batch)
        if proc is not None:
            proc.check()
        if missing and time.monotonic() - started > timeout:
            raise TimeoutError(f"{topic}: {len(missing)} customers short of their last version")
        if missing:
            await asyncio.sleep(0.25)
    return time.monotonic() - started, records


# --- the raw ceiling (its own process) -------------------------------------------------


async def raw_consume(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    """A plain aiokafka consumer reading `count` records as fast as it can."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    async with asyncio.timeout(30):
        await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, nbytes = 0, 0
        cpu0, first = time.process_time(), time.monotonic()
        async with asyncio.timeout(300):
            while seen < count:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for records in batches.values():
                    seen += len(records)
                    nbytes += sum(len(r.value) for r in records)
        seconds = time.monotonic() - first
        cpu = time.process_time() - cpu0
    finally:
        await consumer.stop()
    return {
        "records": seen,
        "seconds": round(seconds, 3),
        "events_per_s": round(seen / seconds, 1),
        "mib_per_s": round(nbytes / 2**20 / seconds, 1),
        "cpu_cores": round(cpu / seconds, 2),
    }


def run_raw_ceiling(bootstrap: str, topic: str, count: int, logdir: Path) -> dict[str, Any]:
    return _run_reader(["bench.worker_bench", "raw-consume"], bootstrap, topic, count, logdir)


def run_faust_ceiling(
    bootstrap: str, topic: str, count: int, logdir: Path, shape: str
) -> dict[str, Any]:
    """`bench.faust_noop`: what Faust alone costs per event, on the same topic."""
    return _run_reader(["bench.faust_noop"], bootstrap, topic, count, logdir, shape)


def _run_reader(
    module: list[str], bootstrap: str, topic: str, count: int, logdir: Path, *extra: str
) -> dict[str, Any]:
    name = "-".join([module[-1].rsplit(".", 1)[-1], *extra])
    out = logdir / f"{name}.json"
    argv = [sys.executable, "-m", *module, bootstrap, topic, str(count), str(out), *extra]
    proc = Proc(argv, {}, logdir / f"{name}.log")
    if proc.proc.wait(timeout=600) != 0:
        raise RuntimeError(f"{name} failed:\n{proc.tail()}")
    proc.stop()
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    return result


# --- a worker --------------------------------------------------------------------------


def worker_env(
    bootstrap: str, prefix: str, store: str, data_dir: Path, tenants_file: Path
) -> dict[str, str]:
    return {
        "QUOTAFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "QUOTAFLOW_TOPIC_PREFIX": prefix,
        "QUOTAFLOW_PARTITIONS": str(PARTITIONS),
        "QUOTAFLOW_APP_ID": f"{prefix}app",
        "QUOTAFLOW_DATA_DIR": str(data_dir),
        "QUOTAFLOW_STORE": store,
        "QUOTAFLOW_TENANTS_FILE": str(tenants_file),
        "QUOTAFLOW_STRIPE_FETCH": "false",
        "QUOTAFLOW_LOG_LEVEL": "WARNING",
    }


@dataclass(frozen=True)
class WorkerTuning:
    """Changes to `quotaflow worker` tried from the bench, without editing streams/app.py.

    - `switch_interval_ms`: Faust runs its consumer in a thread of its own, so the agent's
      thread and the consumer's take turns on the GIL; a thread that wants it waits up to
      the interpreter's switch interval (5 ms by default) while the other one computes.
    """

    profile: str | None = None
    switch_interval_ms: float | None = None

    @property
    def plain(self) -> bool:
        return self.profile is None and self.switch_interval_ms is None

    def argv(self) -> list[str]:
        out = []
        if self.profile is not None:
            out += ["--profile", self.profile]
        if self.switch_interval_ms is not None:
            out += ["--switch-interval-ms", str(self.switch_interval_ms)]
        return out


def start_worker(env: dict[str, str], log: Path, tuning: WorkerTuning) -> Proc:
    """`quotaflow worker`, or the same through the `bench-worker` verb when tuned."""
    if tuning.plain:
        return Proc([sys.executable, "-m", "quotaflow.commands.cli", "worker"], env, log)
    return Proc(
        [sys.executable, "-m", "bench.worker_bench", "bench-worker", *tuning.argv()], env, log
    )


def bench_worker(tuning: WorkerTuning) -> None:
    """`quotaflow worker` with `tuning` applied; cProfile stats are written on exit."""
    from quotaflow.commands.cli import main as cli

    if tuning.switch_interval_ms is not None:
        sys.setswitchinterval(tuning.switch_interval_ms / 1000)
    profiler = cProfile.Profile() if tuning.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        cli(["worker"], standalone_mode=False)
    except SystemExit:
        pass
    finally:
        if profiler is not None and tuning.profile:
            profiler.disable()
            profiler.dump_stats(tuning.profile)


def top_functions(path: Path, n: int = 25) -> list[str]:
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(n)
    lines = [line.rstrip() for line in buf.getvalue().splitlines()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return [line for line in lines[start:] if line]


# --- phases ----------------------------------------------------------------------------


async def paced(
    bootstrap: str, topic: str, workload: Workload, rate: float, seconds: float
) -> dict[str, tuple[float, float]]:
    """Sends one event at a time at `rate`/s; event id -> (send time, broker append time)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0
    )
    async with asyncio.timeout(30):
        await producer.start()
    sent: dict[str, tuple[float, float]] = {}
    futures: list[tuple[str, float, asyncio.Future[Any]]] = []
    total = int(rate * seconds)
    events = [
        workload.event(
            workload.rng.randrange(workload.n_tenants), workload.rng.randrange(workload.cpt)
        )
        for _ in range(total)
    ]
    try:
        start = time.monotonic() + 0.05
        for i, (tenant, evt, body) in enumerate(events):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            hdrs = headers(tenant, evt, event_type_of(body))
            t0 = time.time()
            fut = await producer.send(topic, body, key=tenant.encode(), headers=hdrs)
            futures.append((evt, t0, fut))
        for evt, t0, fut in futures:
            meta = await fut
            sent[evt] = (t0, meta.timestamp / 1000.0)
    finally:
        await producer.stop()
    return sent


async def bench_store(
    bootstrap: str,
    store: str,
    events: list[tuple[str, str, bytes]],
    workload: Workload,
    tenants_file: Path,
    workdir: Path,
    args: argparse.Namespace,
    ceiling: bool,
) -> dict[str, Any]:
    prefix = unique(f"wb-{store.split(':')[0]}-") + "."
    stamp = {} if args.create_time else LOG_APPEND
    events_topic, updates_topic = f"{prefix}stripe.events", f"{prefix}quota.updates"
    await create_topics(
        bootstrap,
        [
            (events_topic, PARTITIONS, {"cleanup.policy": "delete", **stamp}),
            (updates_topic, PARTITIONS, {"cleanup.policy": "compact", **LOG_APPEND}),
        ],
    )
    n = len(events)
    result: dict[str, Any] = {"store": store, "events": n}
    progress(f"{store}: producing {n} events")
    result["prefill_events_per_s"] = round(await produce_all(bootstrap, events_topic, events), 1)
    if ceiling:
        progress("raw aiokafka ceiling")
        result["raw_consumer"] = run_raw_ceiling(bootstrap, events_topic, n, workdir)
        progress("Faust ceiling: a no-op agent, per event and in batches")
        result["faust_noop_agent"] = run_faust_ceiling(
            bootstrap, events_topic, n, workdir, "events"
        )
        result["faust_noop_take"] = run_faust_ceiling(bootstrap, events_topic, n, workdir, "take")

    env = worker_env(bootstrap, prefix, store, workdir / f"data-{store[:3]}", tenants_file)
    profile = Path(args.profile) if args.profile and store.startswith("memory") else None
    tuning = WorkerTuning(str(profile) if profile else None, args.switch_interval_ms)
    with processes() as started:
        worker = start_worker(env, workdir / f"worker-{store[:3]}.log", tuning)
        started.append(worker)
        with ProcSampler(worker.pid) as sampler:
            progress(f"{store}: worker catching up")
            counts: dict[str, int] = {}
            count_versions((evt for _, evt, _ in events), counts)
            waited, records = await wait_versions(
                bootstrap, updates_topic, dict(counts), args.timeout, worker
            )
            usage = sampler.window()
            stamps = sorted(r.timestamp for r in records)
            span = (stamps[-1] - stamps[0]) / 1000.0
            result["throughput"] = {
                "updates": len(records),
                "first_to_last_s": round(span, 3),
                "events_per_s": round((n - 1) / span, 1) if span else None,
                "start_to_done_s": round(waited, 2),
                "worker_cpu_cores": usage["cpu_cores"],
                "worker_cpu_ms_per_event_incl_startup": round(usage["cpu_s"] * 1000 / n, 3),
                "worker_rss_mib": usage["rss_mib"],
            }

            progress(f"{store}: paced {args.rate}/s for {args.latency_seconds}s")
            before = await partition_ends(bootstrap, updates_topic)
            sampler.mark()
            sent = await paced(bootstrap, events_topic, workload, args.rate, args.latency_seconds)
            versions = count_versions(sent, counts)  # `sent` is in send order
            wanted = {key_of(evt): version for evt, version in versions.items()}
            _, new = await wait_versions(bootstrap, updates_topic, wanted, 60, worker, before)
            usage = sampler.window()
            # Each event is served by the first record of its customer at or past its
            # version (a batch publishes only a customer's newest version).
            by_key: dict[str, list[tuple[int, float, float]]] = {}
            for record in new:
                doc = orjson.loads(record.value)
                by_key.setdefault(record.key.decode(), []).append(
                    (doc["version"], float(record.timestamp), float(doc["updated_at"]))
                )
            kafka_ms, apply_ms = [], []
            for evt, (t0, appended) in sent.items():
                version = versions[evt]
                hit = next((r for r in by_key.get(key_of(evt), ()) if r[0] >= version), None)
                if hit is None:
                    continue
                kafka_ms.append(hit[1] - appended * 1000.0)
                apply_ms.append((hit[2] - t0) * 1000.0)
            result["latency"] = {
                "rate_per_s": args.rate,
                "seconds": args.latency_seconds,
                "matched": len(kafka_ms),
                "kafka_to_quota_updates_ms": summary(kafka_ms, 1),
                "send_to_worker_apply_ms": summary(apply_ms, 2),
                "worker_cpu_cores": usage["cpu_cores"],
                "worker_cpu_ms_per_event": round(usage["cpu_s"] * 1000 / max(1, len(sent)), 3),
                "worker_rss_mib": usage["rss_mib"],
                "worker_peak_rss_mib": usage["peak_rss_mib"],
            }
        worker.stop()
    if profile is not None and profile.exists():
        result["profile_top_tottime"] = top_functions(profile)
        result["profile_file"] = str(profile)
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report = Report("worker", vars(args))
    with bench_workspace(report, "worker", args.keep) as (bootstrap, workdir):
        tenants_file = write_tenants(workdir / "tenants.json", make_tenants(args.tenants))
        workload = Workload(args.tenants, args.customers)
        progress(f"generating {args.events} events")
        events = workload.mixed(args.events)
        stores = [s.strip() for s in args.stores.split(",") if s.strip()]
        results = []
        for i, store in enumerate(stores):
            results.append(
                await bench_store(
                    bootstrap, store, events, workload, tenants_file, workdir, args, i == 0
                )
            )
        raw = results[0]["raw_consumer"]["events_per_s"]
        for store_result in results:
            rate = store_result["throughput"]["events_per_s"]
            store_result["throughput"]["fraction_of_raw"] = round(rate / raw, 4) if rate else None
            noop = results[0]["faust_noop_agent"]["events_per_s"]
            fraction = round(rate / noop, 4) if rate else None
            store_result["throughput"]["fraction_of_faust_noop"] = fraction
        report["stores"] = results
        report["targets"] = {"events_per_s": 5000, "fraction_of_raw": 0.4, "latency_p99_ms": 10}
    report.emit()
    return report.doc


def add_tuning_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--switch-interval-ms", type=float, default=None,
        help="run the worker with this interpreter switch interval (default 5 ms)",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["raw-consume"]:
        bootstrap, topic, count, out = argv[1:5]
        result = asyncio.run(raw_consume(bootstrap, topic, int(count)))
        Path(out).write_bytes(orjson.dumps(result))
        return
    if argv[:1] == ["bench-worker"]:
        verb = argparse.ArgumentParser(prog="bench-worker")
        verb.add_argument("--profile")
        verb.add_argument("--switch-interval-ms", type=float)
        v = verb.parse_args(argv[1:])
        bench_worker(WorkerTuning(v.profile, v.switch_interval_ms))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--customers", type=int, default=10, help="customers per tenant")
    parser.add_argument("--stores", default="memory://,rocksdb://")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--profile", metavar="FILE", help="cProfile the memory:// worker")
    add_tuning_flags(parser)
    parser.add_argument(
        "--create-time", action="store_true",
        help="stripe.events with CreateTime (as `quotaflow topics` makes it); "
        "kafka_to_quota_updates_ms is then meaningless",
    )  # fmt: skip
    parser.add_argument("--keep", metavar="DIR", help="keep logs and state in DIR")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.tenants, args.latency_seconds = 2000, 50, 3.0
        args.stores = "memory://"
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
