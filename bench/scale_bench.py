"""Scale benchmark: many quota keys in one `quotaflow worker` with RocksDB — its memory, its
rebuild from the changelog alone, and its restart with local state.

Run: `.venv/bin/python -m bench.scale_bench [--keys 100000] [--fill changelog|events]
[--tuned-rebuild] [--py-spy FILE] [--quick]`. Prints one JSON document. Keys are
tenants x 10 customers (`--keys` must be a multiple of 10; the issue's target is
`--keys 1000000`, 100,000 tenants).

`--fill changelog` (the default) writes every key's customer state straight into the
worker's `customers` changelog (bench/scale_fill.py); the worker then starts on an empty
data directory, so the first run is the rebuild:
1. Raw baseline, same run: a plain aiokafka consumer (its own process) reads the changelog.
2. Rebuild: start a worker (rocksdb://, snapshot mode) and at once produce a probe event for
   a new customer: ready = process start -> the probe's quota update is in `quota.updates`
   (Faust processes nothing before its tables are recovered). RSS sampled throughout (peak)
   and 3 s after ready (settled). Then one event for each of a few existing keys: each
   quota update must carry the written state's version + 1, so the states were loaded.
3. Restart: SIGTERM, start again on the same data directory, probe again.
4. With `--tuned-rebuild`: delete the data directory and rebuild again with larger
   consumer fetches and recovery buffers (`scale-worker`), the same probe.

`--fill events` is the older fill: one `customer.created` per key produced before the
worker starts, which applies them all (~1,200 keys/s), then restart and rebuild as above.
It also measures the worker's fill rate, which the worker bench measures better.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
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
    load_average,
    progress,
    unique,
)
from bench.scale_fill import changelog_topic, expected_last, key_of, shape_of, write_changelog
from bench.tenant_fill import TenantKeys, bench_tenants, fill_tenants_topic
from bench.worker_bench import (
    LOG_APPEND,
    PARTITIONS,
    Workload,
    make_tenants,
    partition_ends,
    produce_all,
    read_topic,
    run_raw_ceiling,
    tenant_id,
    wait_records,
    worker_env,
    write_tenants,
)

PY_SPY = Path("/work/main/.venv/bin/py-spy")


async def probe(
    bootstrap: str,
    env: dict[str, str],
    work: Path,
    name: str,
    workload: Workload,
    count: int,
    tuned: Sequence[str] = (),
    py_spy: Path | None = None,
) -> dict[str, Any]:
    """Starts a worker, sends one new event at once; seconds until its quota update.

    `count` makes the probe's customer new; `tuned` runs the worker through
    `scale-worker` with those flags."""
    topics = env["QUOTAFLOW_TOPIC_PREFIX"]
    if tuned:
        args = [sys.executable, "-m", "bench.scale_bench", "scale-worker", *tuned]
        worker = Proc(args, env, work / name / "worker.log")
    else:
        worker = Proc.quotaflow(["worker"], env, work / name)
    spy = None
    if py_spy is not None:
        spy_args = [str(PY_SPY), "record", "--pid", str(worker.pid), "--rate", "25"]
        spy_args += ["--nonblocking", "--format", "raw", "--output", str(py_spy)]
        spy = Proc(spy_args, {}, work / name / "py-spy.log")
    updates = f"{topics}quota.updates"
    before = await partition_ends(bootstrap, updates)
    with ProcSampler(worker.pid) as sampler:
        started = time.monotonic()
        event = workload.event(0, 10_000 + count)
        await produce_all(bootstrap, f"{topics}stripe.events", [event])
        await wait_update(bootstrap, updates, before, event[1], worker)
        ready = time.monotonic() - started
        if spy is not None:
            spy.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.proc.wait(30)
            spy.stop()
        await asyncio.sleep(3)
        usage = sampler.window()
    return {
        "ready_s": round(ready, 2),
        "rss_mib": usage["rss_mib"],
        "peak_rss_mib": usage["peak_rss_mib"],
        "cpu_s": usage["cpu_s"],
        "load": load_average(),
        "_proc": worker,
    }


async def wait_update(
    bootstrap: str, topic: str, before: dict[int, int], event_id: str, worker: Proc
) -> None:
    """Until the quota update caused by `event_id` is in `topic` (a restarted worker may
    also re-emit quotas of events it re-reads, so counting records is not enough)."""
    deadline = time.monotonic() + 900
    while True:
        for record in await read_topic(bootstrap, topic, before):
            if orjson.loads(record.value)["reason"]["id"] == event_id:
                return
        worker.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no quota update for {event_id} within 900 s")
        await asyncio.sleep(0.25)


def dir_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def top_frames(raw: Path, n: int = 20) -> list[str]:
    """Share of py-spy samples per innermost frame, and per quotaflow/faust/aiokafka frame."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        total += int(count)
        own[stack.split(";")[-1]] += int(count)
    return [f"{100 * c / total:5.1f}% {frame}" for frame, c in own.most_common(n)]


async def verify_loaded(
    bootstrap: str, prefix: str, n_tenants: int, worker: Proc
) -> dict[str, Any]:
    """One event for each of a few existing keys: the worker must answer with the written
    state's version + 1 (version 1 would mean it did not find the state)."""
    picks = sorted({(t, c) for t, c in [(0, 1), (n_tenants // 3, 4), (n_tenants - 1, 9)]})
    picks += [key_of(k) for k in range(13, 13 + 7 * 3, 3) if key_of(k)[0] < n_tenants]
    workload = Workload(n_tenants, 10)
    workload.seq = 10**7  # `created` after the written states' snapshots
    events, want = [], {}
    for t, c in picks:
        workload.steps[(t, c)] = shape_of(t, c)
        events.append(workload.event(t, c))
        last = expected_last_cached(t, c)
        want[events[-1][1]] = (f"{tenant_id(t)}/cus_{t}_{c}", 1 + (last.version if last else 0))
    topic = f"{prefix}quota.updates"
    before = await partition_ends(bootstrap, topic)
    await produce_all(bootstrap, f"{prefix}stripe.events", events)
    got: dict[str, tuple[str, int]] = {}
    async with asyncio.timeout(120):
        while len(got) < len(want):
            worker.check()
            await asyncio.sleep(0.25)
            for record in await read_topic(bootstrap, topic, before):
                doc = orjson.loads(record.value)
                if doc["reason"]["id"] in want:
                    got[doc["reason"]["id"]] = (record.key.decode(), doc["version"])
    checked = [{"key": k, "want_version": v, "got": got.get(e)} for e, (k, v) in want.items()]
    ok = all(c["got"] == (c["key"], c["want_version"]) for c in checked)
    if not ok:
        raise RuntimeError(f"rebuilt states not served as written: {checked}")
    return {"ok": ok, "keys": len(checked), "examples": checked[:3]}


_SHAPES: list[str] = []


def expected_last_cached(t: int, c: int) -> Any:
    if not _SHAPES:
        from bench.scale_fill import templates

        _SHAPES.extend(templates())
    return expected_last(_SHAPES, t, c)


async def topics_for(bootstrap: str, prefix: str, changelog: bool) -> None:
    specs: list[tuple[str, int, dict[str, str]]] = [
        (f"{prefix}stripe.events", PARTITIONS, {"cleanup.policy": "delete"}),
        (f"{prefix}quota.updates", PARTITIONS, {"cleanup.policy": "compact", **LOG_APPEND}),
    ]
    if changelog:  # as Faust declares it: compacted, co-partitioned
        specs.append((changelog_topic(f"{prefix}app"), PARTITIONS, {"cleanup.policy": "compact"}))
    await create_topics(bootstrap, specs)


async def tenants_env(
    args: argparse.Namespace,
    report: Report,
    bootstrap: str,
    prefix: str,
    work: Path,
    data: Path,
) -> dict[str, str]:
    """The worker's environment, with its tenants where `--tenants-from` says: sealed,
    signed records on the `tenants` topic (production's path, the default) or a file."""
    n_tenants = args.keys // 10
    if args.tenants_from == "file":
        progress(f"tenants file ({n_tenants} tenants)")
        tenants_file = write_tenants(work / "tenants.json", make_tenants(n_tenants))
        return worker_env(bootstrap, prefix, "rocksdb://", data, tenants_file)
    progress(f"tenants topic ({n_tenants} sealed, signed records)")
    keys = TenantKeys.generate()
    topic = f"{prefix}tenants"
    await create_topics(bootstrap, [(topic, 1, {"cleanup.policy": "compact"})])
    report["tenants_fill"] = await fill_tenants_topic(
        bootstrap, topic, bench_tenants(n_tenants), keys
    )
    env = worker_env(bootstrap, prefix, "rocksdb://", data, work / "unused")
    return {**env, **keys.env(prefix), "QUOTAFLOW_TENANTS_FILE": ""}


async def run_changelog_fill(
    args: argparse.Namespace, report: Report, bootstrap: str, work: Path
) -> None:
    keys = args.keys
    n_tenants = keys // 10
    prefix = unique("scale-") + "."
    await topics_for(bootstrap, prefix, changelog=True)
    workload = Workload(n_tenants, 10)
    data = work / "data"
    env = await tenants_env(args, report, bootstrap, prefix, work, data)
    changelog = changelog_topic(env["QUOTAFLOW_APP_ID"])

    progress(f"fill: {keys} customer states into {changelog}")
    report["fill"] = {"mode": "changelog", **await write_changelog(bootstrap, changelog, keys)}
    report["changelog_records"] = await end_offsets_total(bootstrap, changelog)

    progress("raw aiokafka read of the changelog (baseline)")
    raw = run_raw_ceiling(bootstrap, changelog, keys, work)
    report["raw_changelog_read"] = raw

    progress("rebuild from the changelog alone (empty data dir)")
    spy = Path(args.py_spy) if args.py_spy else None
    rebuild = await probe(bootstrap, env, work, "rebuild", workload, 0, py_spy=spy)
    worker = rebuild.pop("_proc")
    try:
        progress("verify: events for existing keys")
        report["verified"] = await verify_loaded(bootstrap, prefix, n_tenants, worker)
    finally:
        worker.stop(120)
    report["rebuild"] = rebuild
    if spy is not None and spy.exists():
        report["rebuild_py_spy_top_frames"] = top_frames(spy)
    report["data_dir_mib"] = dir_mib(data)
    updates = await end_offsets_total(bootstrap, f"{prefix}quota.updates")

    progress("restart with local state")
    restart = await probe(bootstrap, env, work, "restart", workload, updates)
    restart.pop("_proc").stop(120)
    report["restart"] = restart

    recover_s = max(1e-9, rebuild["ready_s"] - restart["ready_s"])
    report["changelog_read_in_worker"] = {
        "method": "records / (rebuild ready - restart ready): the restart's start-up, "
        "registry load and rebalance are common to both",
        "records_per_s": round(keys / recover_s, 1),
        "fraction_of_raw": round(keys / recover_s / raw["events_per_s"], 4),
    }
    if args.tuned_rebuild:
        progress("rebuild again, tuned fetches and recovery buffers")
        shutil.rmtree(data)
        tuned = ["--max-fetch-bytes", str(16 * 2**20), "--recovery-buffer", "10000"]
        again = await probe(bootstrap, env, work, "rebuild-tuned", workload, updates + 1, tuned)
        again.pop("_proc").stop(120)
        report["rebuild_tuned"] = {"flags": tuned, **again}


async def run_events_fill(
    args: argparse.Namespace, report: Report, bootstrap: str, work: Path
) -> None:
    keys = args.keys
    n_tenants = keys // 10
    prefix = unique("scale-") + "."
    await topics_for(bootstrap, prefix, changelog=False)
    workload = Workload(n_tenants, 10)
    env = await tenants_env(args, report, bootstrap, prefix, work, work / "data")
    progress(f"generating and producing {keys} events")
    events = [workload.event(*key_of(k)) for k in range(keys)]
    report["prefill_events_per_s"] = round(
        await produce_all(bootstrap, f"{prefix}stripe.events", events), 1
    )
    del events
    data = work / "data"

    progress("fill: worker applies every key")
    worker = Proc.quotaflow(["worker"], env, work / "fill")
    try:
        with ProcSampler(worker.pid) as sampler:
            waited = await wait_records(
                bootstrap, f"{prefix}quota.updates", keys, args.timeout, worker
            )
            await asyncio.sleep(3)
            usage = sampler.window()
        report["fill"] = {
            "mode": "events",
            "keys": keys,
            "seconds": round(waited, 1),
            "events_per_s": round(keys / waited, 1),
            "rss_mib_settled": usage["rss_mib"],
            "peak_rss_mib": usage["peak_rss_mib"],
        }
    finally:
        stop_started = time.monotonic()
        worker.stop(60)
    report["fill"]["stop_s"] = round(time.monotonic() - stop_started, 2)
    report["data_dir_mib"] = dir_mib(data)
    changelog = changelog_topic(env["QUOTAFLOW_APP_ID"])
    report["changelog_records"] = await end_offsets_total(bootstrap, changelog)

    progress("restart with local state")
    restart = await probe(bootstrap, env, work, "restart", workload, keys)
    restart.pop("_proc").stop(60)
    report["restart"] = restart

    progress("rebuild from the changelog alone")
    shutil.rmtree(data)
    rebuild = await probe(bootstrap, env, work, "rebuild", workload, keys + 1)
    rebuild.pop("_proc").stop(60)
    report["rebuild"] = rebuild

    scale = 1_000_000 / keys
    base = args.idle_rss_mib
    report["extrapolated_to_1m_keys"] = {
        "method": "RSS linear in keys above an idle worker's; rebuild = restart's fixed "
        "start-up + the rest linear in keys; fill linear in keys",
        "rss_mib": round(base + (report["fill"]["peak_rss_mib"] - base) * scale, 0),
        "rebuild_s": round(
            restart["ready_s"] + (rebuild["ready_s"] - restart["ready_s"]) * scale, 0
        ),
        "fill_s": round(report["fill"]["seconds"] * scale, 0),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report = Report("scale", vars(args))
    report["keys"] = args.keys
    report["tenants"], report["customers_per_tenant"] = args.keys // 10, 10
    with bench_workspace(report, "scale", args.keep) as (bootstrap, work):
        fill = run_changelog_fill if args.fill == "changelog" else run_events_fill
        await fill(args, report, bootstrap, work)
        runs = [report.doc.get(k) or {} for k in ("fill", "rebuild", "restart", "rebuild_tuned")]
        report["peak_rss_mib"] = max(r.get("peak_rss_mib", 0.0) for r in runs)
        report["targets"] = {"rss_mib_1m": 1536, "restart_s": 10, "rebuild_s": 60}
    report.emit()
    return report.doc


def tuned_worker(argv: Sequence[str]) -> None:
    """`quotaflow worker` with larger changelog fetches and recovery buffers: what Faust
    exposes (`consumer_max_fetch_size`, `broker_max_poll_records`, a table's
    `recovery_buffer_size`) without quotaflow setting it, so it is patched in here."""
    from faust.tables.base import Collection
    from faust.transport.drivers import aiokafka as driver

    from quotaflow.commands.cli import main as cli
    from streams import faust_tuning

    parser = argparse.ArgumentParser(prog="scale-worker")
    parser.add_argument("--max-fetch-bytes", type=int, required=True)
    parser.add_argument("--recovery-buffer", type=int, required=True)
    v = parser.parse_args(list(argv))
    faust_tuning.set_fetch_max_wait(10)  # installs the factory wrapped below
    create = driver.AIOKafkaConsumerThread._create_worker_consumer

    def big_fetches(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._max_partition_fetch_bytes = v.max_fetch_bytes  # read by start()
        consumer._fetch_max_bytes = max(consumer._fetch_max_bytes, 4 * v.max_fetch_bytes)
        consumer._max_poll_records = None
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = big_fetches  # type: ignore[method-assign]
    init = Collection.__init__

    def big_buffer(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "recovery_buffer_size": v.recovery_buffer})

    Collection.__init__ = big_buffer  # type: ignore[method-assign]
    with contextlib.suppress(SystemExit):
        cli(["worker"], standalone_mode=False)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["scale-worker"]:
        tuned_worker(argv[1:])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--keys", type=int, default=100_000, help="tenants x 10 customers")
    parser.add_argument(
        "--fill", choices=("changelog", "events"), default="changelog",
        help="write the states into the changelog (fast) or push events through a worker",
    )  # fmt: skip
    parser.add_argument(
        "--tenants-from", choices=("topic", "file"), default="topic",
        help="the worker's tenants: sealed, signed records on the tenants topic, or a file",
    )  # fmt: skip
    parser.add_argument("--tuned-rebuild", action="store_true", help="rebuild again, tuned")
    parser.add_argument("--py-spy", metavar="FILE", help="py-spy the changelog rebuild")
    parser.add_argument("--timeout", type=float, default=1800.0, help="fill time limit, s")
    parser.add_argument(
        "--idle-rss-mib", type=float, default=80.0,
        help="events fill: an idle worker's RSS, the intercept of the extrapolation",
    )  # fmt: skip
    parser.add_argument("--keep", metavar="DIR", help="keep logs and state in DIR")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.keys = 2000
    if args.keys < 10 or args.keys % 10:
        parser.error("--keys is tenants x 10 customers: a positive multiple of 10")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
