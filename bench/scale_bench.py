"""Scale benchmark: many quota keys in one `quotaflow worker` with RocksDB — its memory, its
restart with local state, and its rebuild from the changelog alone.

Run: `.venv/bin/python -m bench.scale_bench [--keys 100000] [--quick]`. Prints one JSON
document. The issue's target size is `--keys 1000000` (100,000 tenants x 10 customers);
at this machine's worker rate that takes longer than a bench should, so the default is
100,000 and the JSON carries a per-key extrapolation.

1. Fill: one `customer.created` per key (tenants = keys / 10), produced before the
   worker starts; a `quotaflow worker` (rocksdb://, snapshot mode) applies them all.
   RSS sampled throughout (peak) and after it settles.
2. Restart: SIGTERM, start again on the same data directory, and at once produce a probe
   event for a new customer: ready = process start -> the probe's quota update is in
   `quota.updates` (Faust processes nothing before its tables are recovered).
3. Rebuild: SIGTERM, delete the data directory, start, probe again: the tables come back
   from the changelog topic alone.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    Proc,
    ProcSampler,
    Report,
    create_topics,
    end_offsets_total,
    kafka_bootstrap,
    progress,
    unique,
)
from bench.worker_bench import (
    LOG_APPEND,
    PARTITIONS,
    Workload,
    make_tenants,
    produce_all,
    wait_records,
    worker_env,
    write_tenants,
)


async def probe(
    bootstrap: str, env: dict[str, str], work: Path, name: str, workload: Workload, count: int
) -> dict[str, Any]:
    """Starts a worker, sends one new event at once; seconds until its quota update."""
    topics = env["QUOTAFLOW_TOPIC_PREFIX"]
    worker = Proc.quotaflow(["worker"], env, work / name)
    with ProcSampler(worker.pid) as sampler:
        started = time.monotonic()
        await produce_all(bootstrap, f"{topics}stripe.events", [workload.event(0, 10_000 + count)])
        await wait_records(bootstrap, f"{topics}quota.updates", count + 1, 600, worker)
        ready = time.monotonic() - started
        await asyncio.sleep(2)
        usage = sampler.window()
    return {
        "ready_s": round(ready, 2),
        "rss_mib": usage["rss_mib"],
        "peak_rss_mib": usage["peak_rss_mib"],
        "_proc": worker,
    }


def dir_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report = Report("scale", vars(args))
    keys = args.keys
    n_tenants = max(1, keys // 10)
    with (
        kafka_bootstrap() as (bootstrap, private),
        tempfile.TemporaryDirectory(prefix="qf-bench-scale-") as tmp,
    ):
        report["private_broker"] = private
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prefix = unique("scale-") + "."
        await create_topics(
            bootstrap,
            [
                (f"{prefix}stripe.events", PARTITIONS, {"cleanup.policy": "delete"}),
                (f"{prefix}quota.updates", PARTITIONS, {"cleanup.policy": "compact", **LOG_APPEND}),
            ],
        )
        progress(f"tenants file ({n_tenants} tenants)")
        tenants_file = write_tenants(work / "tenants.json", make_tenants(n_tenants))
        workload = Workload(n_tenants, 10)
        progress(f"generating and producing {keys} events")
        events = [workload.event(k // 10, k % 10) for k in range(keys)]
        report["prefill_events_per_s"] = round(
            await produce_all(bootstrap, f"{prefix}stripe.events", events), 1
        )
        del events
        data = work / "data"
        env = worker_env(bootstrap, prefix, "rocksdb://", data, tenants_file)

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
        changelog = f"{env['QUOTAFLOW_APP_ID']}-customers-changelog"
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
        report["targets"] = {"rss_mib_1m": 1536, "restart_s": 10, "rebuild_s": 60}
    report.emit()
    return report.doc


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=1800.0, help="fill time limit, s")
    parser.add_argument(
        "--idle-rss-mib", type=float, default=80.0,
        help="an idle worker's RSS, the intercept of the extrapolation",
    )  # fmt: skip
    parser.add_argument("--keep", metavar="DIR", help="keep logs and state in DIR")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.quick:
        args.keys = 2000
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
