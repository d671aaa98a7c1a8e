"""What every benchmark shares: percentiles, per-process CPU and RSS from /proc, a private
broker, the machine's description (load average included: the machine is shared). Child
processes, readiness waits and topic creation are the harness's
(`quotaflow.testing.harness`, shared with the tests and `quotaflow dev`), re-exported here.

A bench prints exactly one JSON document on stdout (`emit`); `python -m bench` collects
them. Figures are only comparable within one run: report ratios against a baseline
measured in the same run, beside the load average at its start and end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from quotaflow.testing.harness import Process as Process
from quotaflow.testing.harness import create_topics as create_topics
from quotaflow.testing.harness import processes as processes
from quotaflow.testing.harness import wait_http as wait_http

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
REPO = Path(__file__).resolve().parent.parent


# --- statistics ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..1)."""
    if not sorted_values:
        return math.nan
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank]


# Where a distribution is kept for its CDF (`cdf`): every 5 % through the body, then each
# step of the tail a log-scale chart shows (99, 99.9, 99.99 %). About 40 points draw the
# curve as finely as a chart can show it, in under 1 KiB of JSON, and they are computed
# from the samples after the measured loop, so recording them costs the loop nothing.
CDF_PROBABILITIES: tuple[float, ...] = (
    0.0001, 0.001, 0.005, 0.01, 0.02, 0.05,
    0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80,
    0.85, 0.90, 0.925, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999,
    0.99999,
)  # fmt: skip


def _significant(value: float) -> float:
    return float(f"{value:.4g}")


def cdf(sorted_values: Sequence[float], unit: str = "ms", scale: float = 1.0) -> dict[str, Any]:
    """The empirical distribution of already sorted samples, for a CDF chart (bench/charts.py):
    `{"unit", "n", "points": [[p, value], ...]}` with the minimum at p 0, the maximum at p 1
    and, between them, the nearest-rank value at each of CDF_PROBABILITIES the sample can
    resolve (1/n <= p <= 1 - 1/n: 50 samples say nothing about a p99.9). Values are
    multiplied by `scale` (into `unit`) and kept to 4 significant digits."""
    n = len(sorted_values)
    if not n:
        return {"unit": unit, "n": 0, "points": []}
    points = [[0.0, _significant(sorted_values[0] * scale)]]
    points += [
        [p, _significant(percentile(sorted_values, p) * scale)]
        for p in CDF_PROBABILITIES
        if p * n >= 1 and (1 - p) * n >= 1
    ]
    points.append([1.0, _significant(sorted_values[-1] * scale)])
    return {"unit": unit, "n": n, "points": points}


def summary(values: Iterable[float], digits: int = 2, unit: str = "ms") -> dict[str, Any]:
    """n, mean, p50, p90, p99, max of `values` (milliseconds by convention, else `unit`) and
    their `cdf`."""
    data = sorted(values)
    if not data:
        return {"n": 0}
    return {
        "n": len(data),
        "mean": round(sum(data) / len(data), digits),
        "p50": round(percentile(data, 0.50), digits),
        "p90": round(percentile(data, 0.90), digits),
        "p99": round(percentile(data, 0.99), digits),
        "max": round(data[-1], digits),
        "cdf": cdf(data, unit),
    }


# --- processes -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


class ProcSampler:
    """Samples one process's RSS in a thread (peak and last) and its CPU between marks."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self.last_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{pid}", daemon=True)
        self._cpu0 = 0.0
        self._t0 = 0.0

    def __enter__(self) -> ProcSampler:
        self.mark()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.last_rss = rss_bytes(self.pid)
                self.peak_rss = max(self.peak_rss, self.last_rss)
            self._stop.wait(self.interval)

    def mark(self) -> None:
        """Starts a CPU measurement window."""
        with contextlib.suppress(OSError):
            self._cpu0 = cpu_seconds(self.pid)
        self._t0 = time.monotonic()

    def window(self) -> dict[str, float]:
        """CPU seconds and mean cores used since `mark()`, and RSS figures in MiB."""
        try:
            cpu = cpu_seconds(self.pid) - self._cpu0
        except OSError:
            cpu = math.nan
        wall = max(1e-9, time.monotonic() - self._t0)
        return {
            "cpu_s": round(cpu, 2),
            "cpu_cores": round(cpu / wall, 2),
            "rss_mib": round(self.last_rss / 2**20, 1),
            "peak_rss_mib": round(self.peak_rss / 2**20, 1),
        }


class Proc(Process):
    """A bench's child process (the harness's `Process`), run from the repository root so
    `python -m bench.<module>` resolves; given longer to stop, as a loaded worker may need."""

    STOP_TIMEOUT = 30.0

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        super().__init__(args, env, log, cwd=REPO)


# --- the machine -----------------------------------------------------------------------


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """What the figures ran on; the load average says how busy the shared machine was."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
    }


def wakeup_latency(round_trips: int = 5_000) -> dict[str, dict[str, float]]:
    """How long one process takes to wake another, on the same CPU and across CPUs: a
    one-byte ping-pong over pipes, the pinger busy between pings as a loaded client is.

    Why the HTTP benches report it: on a virtual machine an idle vCPU is halted on the
    host, and waking it is the host's scheduling, not the guest's. On the bench machine
    that cost p50 ~95 us and p99.9 ~3 ms across vCPUs, against ~7 and ~0.2 ms on one vCPU,
    and every request crosses processes at least twice: a p99 target of 1 ms is then a
    property of the host as much as of the server. Linux only ({} elsewhere)."""
    if not hasattr(os, "sched_setaffinity") or not hasattr(os, "fork"):
        return {}
    cpus = sorted(os.sched_getaffinity(0))
    placements = {"same_cpu": (cpus[0], cpus[0])}
    if len(cpus) > 1:
        placements["across_cpus"] = (cpus[0], cpus[1])
    mine = os.sched_getaffinity(0)
    out: dict[str, dict[str, float]] = {}
    try:
        for name, (pinger, ponger) in placements.items():
            out[name] = _ping_pong(pinger, ponger, round_trips)
    finally:
        os.sched_setaffinity(0, mine)
    return out


def _ping_pong(pinger: int, ponger: int, round_trips: int) -> dict[str, float]:
    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()
    child = os.fork()
    if child == 0:  # the ponger: echoes each byte until told to stop
        try:
            os.sched_setaffinity(0, {ponger})
            while (byte := os.read(ping_r, 1)) != b"q":
                os.write(pong_w, byte)
        finally:
            os._exit(0)
    try:
        os.sched_setaffinity(0, {pinger})
        samples = []
        for _ in range(round_trips):
            start = time.perf_counter_ns()
            os.write(ping_w, b"x")
            os.read(pong_r, 1)
            samples.append(time.perf_counter_ns() - start)
            while time.perf_counter_ns() - start < 500_000:  # 2,000/s, and the CPU kept busy
                pass
    finally:
        os.write(ping_w, b"q")
        os.waitpid(child, 0)
        for fd in (ping_r, ping_w, pong_r, pong_w):
            os.close(fd)
    samples.sort()
    return {
        f"{name}_us": round(percentile(samples, q) / 1e3, 1)
        for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))
    } | {"max_us": round(samples[-1] / 1e3, 1)}


def confine_to_one_cpu() -> int:
    """Keeps this process and everything it starts on one CPU (the first it may use): no
    request then waits for the host to wake a second vCPU (see `wakeup_latency`)."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


# --- a private broker ------------------------------------------------------------------


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[tuple[str, bool]]:
    """(bootstrap, private): QUOTAFLOW_KAFKA_BOOTSTRAP if set, else a fresh LocalKafka on a
    free port in a temporary directory, stopped and deleted on exit."""
    given = os.environ.get("QUOTAFLOW_KAFKA_BOOTSTRAP")
    if given:
        yield given, False
        return
    from quotaflow.commands.localkafka import LocalKafka, free_port

    with tempfile.TemporaryDirectory(prefix="qf-bench-kafka-") as tmp:
        broker = LocalKafka(Path(tmp), port=free_port())
        broker.start()
        try:
            yield broker.bootstrap, True
        finally:
            broker.stop()


@contextlib.contextmanager
def bench_workspace(report: Report, name: str, keep: str | None) -> Iterator[tuple[str, Path]]:
    """(bootstrap, work dir) for one bench run: the broker as `kafka_bootstrap` gives it
    (noted in `report`), and `keep` as the work dir if given, else a temporary one."""
    with (
        kafka_bootstrap() as (bootstrap, private),
        tempfile.TemporaryDirectory(prefix=f"qf-bench-{name}-") as tmp,
    ):
        report["private_broker"] = private
        work = Path(keep) if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        yield bootstrap, work


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid():x}{time.monotonic_ns() % 10**9:x}"


# --- topics and tenants ----------------------------------------------------------------


async def end_offsets_total(bootstrap: str, topic: str, timeout: float = 10.0) -> int:
    """Sum of a topic's end offsets."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    async with asyncio.timeout(timeout):
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
            return sum(ends.values())
        finally:
            await consumer.stop()


def write_json(path: Path, doc: Any) -> None:
    path.write_bytes(orjson.dumps(doc))


# --- output ----------------------------------------------------------------------------


class Report:
    """The one JSON document a bench prints: its figures plus machine and load averages."""

    def __init__(self, name: str, args: Mapping[str, Any]) -> None:
        self.doc: dict[str, Any] = {
            "bench": name,
            "args": dict(args),
            "machine": machine(),
            "load_start": load_average(),
            "started_at": time.time(),
        }

    def __setitem__(self, key: str, value: Any) -> None:
        self.doc[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.doc[key]

    def emit(self) -> None:
        self.doc["load_end"] = load_average()
        self.doc["seconds"] = round(time.time() - self.doc["started_at"], 1)
        sys.stdout.write(orjson.dumps(self.doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        sys.stdout.flush()


def progress(message: str) -> None:
    """Progress goes to stderr; stdout carries only the JSON document."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()
