"""Registry bench: what N tenants cost a component that reads the `tenants` topic.

Run: `.venv/bin/python -m bench.registry_bench [--tenants 100000] [--quick]`. Prints one
JSON document.

1. Fill: N tenants (`bench.tenant_fill.bench_tenants`: three plans, a webhook secret, a
   Stripe API key, a Connect account) sealed and signed as the writer does, produced to
   the `tenants` topic.
2. Each mode in its own fresh process (`child`), so RSS is the registry's:
   - `keyring` (ingress, worker) and `routing` (pushers: no keyring): `start()` until
     ready (the load), then until `checked` (the background check pass). RSS after
     imports, after the load and after the pass; CPU; the event loop's worst lag during
     each (a 5 ms ticker); then first uses: `get` of 1,000 random tenants (document built,
     secrets unwrapped), again (cached), and RSS with the document cache full.
   - `first-use` (keyring, no check pass): `get` of 1,000 random tenants whose records are
     not checked yet (verified on that first use).
   - baselines, same run: `eager` (the same registry with `check_before_ready`, as the
     admin tools start: every record verified and opened before ready) and `file`
     (`QUOTAFLOW_TENANTS_FILE` of the same tenants: the path whose figures the issue
     quoted, every document validated into pydantic models at start).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    Proc,
    Report,
    bench_workspace,
    create_topics,
    load_average,
    progress,
    unique,
)
from bench.tenant_fill import TenantKeys, bench_tenants, fill_tenants_topic

MODES = ("keyring", "routing", "first-use", "eager", "file")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    return round(int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE / 2**20, 1)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LagMeter:
    """The event loop's lateness on a 5 ms sleep: how long it was blocked at a stretch."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - t - 0.005)

    def __enter__(self) -> LagMeter:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def worst_ms(self) -> float:
        return round(self.worst * 1000, 1)


def _window(t0: float, c0: float, lag: LagMeter) -> dict[str, float]:
    return {
        "seconds": round(time.monotonic() - t0, 2),
        "cpu_s": round(cpu_s() - c0, 2),
        "loop_worst_lag_ms": lag.worst_ms,
        "rss_mib": rss_mib(),
    }


def _gets(registry: Any, ids: Sequence[str]) -> dict[str, float]:
    """Mean wall and CPU time of `get` (CPU: less disturbed on a shared machine)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for tenant_id in ids:
        if registry.get(tenant_id) is None:
            raise RuntimeError(f"tenant {tenant_id} not served")
    return {
        "mean_us": round((time.perf_counter() - t0) / len(ids) * 1e6, 1),
        "mean_cpu_us": round((time.process_time() - c0) / len(ids) * 1e6, 1),
    }


async def child(mode: str, n: int, tenants_file: str | None) -> dict[str, Any]:
    """One mode's figures, in this (fresh) process."""
    from quotaflow.registry import load_tenants_file
    from quotaflow.settings import Settings
    from quotaflow.tenants.running import keyring_from_settings
    from quotaflow.tenants.topic_registry import TopicTenantRegistry

    settings = Settings()
    gc.collect()
    out: dict[str, Any] = {"mode": mode, "rss_after_imports_mib": rss_mib()}
    ids = [f"bt{i:06d}" for i in random.Random(5).sample(range(n), min(n, 1000))]
    t0, c0 = time.monotonic(), cpu_s()
    if mode == "file":
        assert tenants_file is not None
        with LagMeter() as lag:
            registry: Any = await asyncio.to_thread(load_tenants_file, Path(tenants_file))
        out["load"] = _window(t0, c0, lag)
        out["get_1000"] = _gets(registry, ids)
        return out
    ring = None if mode == "routing" else keyring_from_settings(settings)
    registry = TopicTenantRegistry(
        settings,
        ring,
        start_timeout=300.0,
        check_in_background=mode != "first-use",
        check_before_ready=mode == "eager",
    )
    with LagMeter() as lag:
        await registry.start()
        out["load"] = _window(t0, c0, lag)
    try:
        if mode == "first-use":
            out["get_1000_unchecked"] = _gets(registry, ids)
            return out
        if mode == "keyring" or mode == "routing":
            t1, c1 = time.monotonic(), cpu_s()
            with LagMeter() as lag:
                await registry.wait_checked(600)
                out["check_pass"] = _window(t1, c1, lag)
            out["check_pass"]["from_start_s"] = round(time.monotonic() - t0, 2)
        out["unreadable"] = len(registry.unreadable())
        out["get_1000_first"] = _gets(registry, ids)
        out["get_1000_cached"] = _gets(registry, ids)
        fill = [f"bt{i:06d}" for i in range(min(n, settings.tenant_cache_size))]
        _gets(registry, fill)
        gc.collect()
        out["rss_cache_full_mib"] = rss_mib()
        out["cache_size"] = settings.tenant_cache_size
    finally:
        await registry.stop()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report = Report("registry", vars(args))
    n = report["tenants"] = args.tenants
    with bench_workspace(report, "registry", args.keep) as (bootstrap, work):
        prefix = unique("reg-") + "."
        topic = f"{prefix}tenants"
        await create_topics(bootstrap, [(topic, 1, {"cleanup.policy": "compact"})])
        keys = TenantKeys.generate()
        progress(f"sealing and producing {n} tenant records")
        tenants = bench_tenants(n)
        report["fill"] = await fill_tenants_topic(bootstrap, topic, tenants, keys)
        tenants_file = work / "tenants.json"
        if "file" in args.modes:
            from quotaflow.registry import dump_tenants

            tenants_file.write_bytes(dump_tenants(tenants))
        del tenants
        env = {"QUOTAFLOW_KAFKA_BOOTSTRAP": bootstrap, **keys.env(prefix)}
        env["QUOTAFLOW_LOG_LEVEL"] = "WARNING"
        for mode in args.modes:
            progress(f"mode {mode}")
            out = work / f"{mode}.json"
            argv = [sys.executable, "-m", "bench.registry_bench", "child", mode, str(n), str(out)]
            if mode == "file":
                argv.append(str(tenants_file))
            proc = Proc(argv, env, work / f"{mode}.log")
            code = proc.proc.wait(900)
            if code != 0:
                raise RuntimeError(f"mode {mode} exited {code}:\n{proc.tail()}")
            proc.stop()
            report[mode] = {**orjson.loads(out.read_bytes()), "load_after": load_average()}
        base = report.doc.get("file")
        new = report.doc.get("keyring")
        if base and new:
            base_mib = base["load"]["rss_mib"] - base["rss_after_imports_mib"]
            new_mib = new["check_pass"]["rss_mib"] - new["rss_after_imports_mib"]
            report["ratios_vs_file"] = {
                "registry_rss": round(new_mib / base_mib, 3),
                "ready_s": round(new["load"]["seconds"] / base["load"]["seconds"], 3),
            }
    report.emit()
    return report.doc


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["child"]:
        mode, n, out = argv[1], int(argv[2]), Path(argv[3])
        doc = asyncio.run(child(mode, n, argv[4] if len(argv) > 4 else None))
        out.write_bytes(orjson.dumps(doc))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--keep", metavar="DIR", help="keep logs in DIR")
    parser.add_argument("--quick", action="store_true", help="2,000 tenants (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tenants = 2000
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
