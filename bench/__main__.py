"""`python -m bench [--quick] [--only NAME[,NAME]] [--no-charts]`: runs every benchmark,
each in its own process (no shared loop, CPU or memory state), collects the JSON each
prints, writes them to `bench/results/<timestamp>.json` (gitignored), prints a compact
table and draws the charts bench/figures.py declares into `bench/results/<timestamp>/`
(`--no-charts` skips them; `python -m bench.charts RESULTS.json` redraws them from any
results file without running a bench).

Benches that need Kafka get a private broker each (started here when
QUOTAFLOW_KAFKA_BOOTSTRAP is unset, so runs are comparable), passed to them in
QUOTAFLOW_KAFKA_BOOTSTRAP. `--quick` runs small sizes: a smoke test, not figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, kafka_bootstrap, load_average, machine, progress

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    kafka: bool
    quick: tuple[str, ...]
    timeout: float = 1800.0


BENCHES = (
    Bench("ingress", "bench.ingress_bench", True, ("--duration", "2", "--skip-baseline")),
    Bench("edge", "bench.edge_bench", False, ("--quick",)),
    Bench("gateway", "bench.gateway_bench", False, ("--quick",)),
    Bench("onboarding", "bench.onboarding_bench", True, ("--count", "5")),
    Bench("usage", "bench.usage_bench", True, ("--quick",)),
    Bench("worker", "bench.worker_bench", True, ("--quick",)),
    Bench("e2e", "bench.e2e_bench", True, ("--quick",)),
    Bench("enforcement", "bench.enforcement_bench", True, ("--quick",)),
    Bench("fetch", "bench.fetch_bench", True, ("--quick",)),
    Bench("scale", "bench.scale_bench", True, ("--quick",), timeout=3600.0),
    Bench("registry", "bench.registry_bench", True, ("--quick",)),
    Bench("console", "bench.console_bench", True, ("--quick",)),
    Bench("notify", "bench.notify_bench", True, ("--quick",)),
)


def parse_json(stdout: str) -> Any:
    """The bench's JSON document: all of stdout, or the last block starting at column 0."""
    try:
        return json.loads(stdout)
    except ValueError:
        lines = stdout.splitlines()
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].startswith("{"):
                try:
                    return json.loads("\n".join(lines[i:]))
                except ValueError:
                    continue
    raise ValueError("no JSON document in the bench's output")


def run_one(bench: Bench, quick: bool) -> dict[str, Any]:
    """Runs one bench module as a subprocess, with a private broker if it needs one."""
    if not (REPO / (bench.module.replace(".", "/") + ".py")).exists():
        return {"skipped": "module not present"}
    args = [sys.executable, "-m", bench.module, *(bench.quick if quick else ())]
    started = time.monotonic()
    load_start = load_average()

    def call(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            env={**os.environ, **env},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=None,  # progress lines go straight through
            text=True,
            timeout=bench.timeout,
            check=False,
        )

    if bench.kafka:
        with kafka_bootstrap() as (bootstrap, _):
            done = call({"QUOTAFLOW_KAFKA_BOOTSTRAP": bootstrap})
    else:
        done = call({})
    entry: dict[str, Any] = {
        "returncode": done.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "load_start": load_start,
        "load_end": load_average(),
    }
    try:
        entry["result"] = parse_json(done.stdout)
    except ValueError as exc:
        entry["error"] = str(exc)
        entry["stdout_tail"] = done.stdout[-2000:]
    return entry


def _get(doc: Any, *path: Any) -> Any:
    for key in path:
        try:
            doc = doc[key]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def rows(name: str, result: Any) -> list[tuple[str, Any]]:
    """The few headline figures of each bench, for the table."""
    if name == "worker":
        out = []
        for store in _get(result, "stores") or []:
            s = store.get("store", "?")
            out += [
                (f"{s} events/s", _get(store, "throughput", "events_per_s")),
                (f"{s} fraction of raw", _get(store, "throughput", "fraction_of_raw")),
                (f"{s} p99 ms @{_get(store, 'latency', 'rate_per_s')}/s",
                 _get(store, "latency", "kafka_to_quota_updates_ms", "p99")),
            ]  # fmt: skip
        out.insert(
            0, ("raw consumer events/s", _get(result, "stores", 0, "raw_consumer", "events_per_s"))
        )
        return out
    if name == "e2e":
        return [
            (f"p50/p99 ms @{p.get('rate_per_s')}/s",
             f"{_get(p, 'webhook_to_edge_all_nodes_ms', 'p50')}/"
             f"{_get(p, 'webhook_to_edge_all_nodes_ms', 'p99')}")
            for p in _get(result, "phases") or []
        ]  # fmt: skip
    if name == "enforcement":
        lag = ("three_nodes", "crossing_to_denied_all_nodes_ms")
        return [
            ("lag p50/p99 ms, 3 nodes",
             f"{_get(result, *lag, 'p50')}/{_get(result, *lag, 'p99')}"),
            ("overshoot p99 / rate x p99 lag",
             f"{_get(result, 'three_nodes', 'overshoot_units', 'p99')}/"
             f"{_get(result, 'three_nodes', 'bound_rate_x_p99_lag_units')}"),
            ("baseline 1 node lag p99 ms",
             _get(result, "baseline_single_node", "crossing_to_denied_all_nodes_ms", "p99")),
        ]  # fmt: skip
    if name == "fetch":
        return [
            ("idle p50/p99 ms",
             f"{_get(result, 'idle', 'webhook_to_edge_ms', 'p50')}/"
             f"{_get(result, 'idle', 'webhook_to_edge_ms', 'p99')}"),
            ("burst last 200 -> last edge ms",
             _get(result, "burst", "last_200_to_last_applied_ms")),
            ("rate fraction of sum of rates", _get(result, "rate", "fraction_of_sum_of_rates")),
            ("isolation p99 with slow / alone", _get(result, "isolation", "p99_ratio")),
        ]  # fmt: skip
    if name == "scale":
        return [
            ("keys", _get(result, "keys")),
            ("peak RSS MiB", _get(result, "peak_rss_mib")),
            ("restart ready s", _get(result, "restart", "ready_s")),
            ("rebuild s", _get(result, "rebuild", "ready_s")),
        ]
    if name == "ingress":
        return [
            ("max webhooks/s", _get(result, "ingress_max", "webhooks_per_s")),
            ("2 workers", _get(result, "ingress_2_workers_max", "webhooks_per_s")),
            ("usage batches/s", _get(result, "ingress_usage_max", "usage_batches_per_s")),
            ("speedup vs baseline", _get(result, "speedup_max_throughput")),
        ]
    if name == "edge":
        return [
            ("check() p99 us", _get(result, "check", "quotaflow_check", "p99_us")),
            (
                "check() rate+feature p99 us",
                _get(result, "check", "quotaflow_check_rate_feature", "p99_us"),
            ),
            ("http consume p99 ms (auth)", _get(result, "http_consume", "p99_ms")),
            ("http consume p99 ms (loopback)", _get(result, "http_consume_loopback", "p99_ms")),
            ("http p99 auth / loopback", _get(result, "http_auth_cost", "p99_ms_ratio")),
        ]
    if name == "onboarding":
        return [("p50/p99 ms", f"{_get(result, 'p50_ms')}/{_get(result, 'p99_ms')}")]
    return []


def table(report: dict[str, Any]) -> str:
    lines = [f"{'bench':<11} {'figure':<32} value"]
    for name, entry in report["benches"].items():
        if "skipped" in entry:
            lines.append(f"{name:<11} {'(skipped: ' + entry['skipped'] + ')':<32}")
            continue
        if entry.get("returncode") != 0 or "result" not in entry:
            lines.append(f"{name:<11} {'FAILED rc=' + str(entry.get('returncode')):<32}")
            continue
        for label, value in rows(name, entry["result"]) or [("(see JSON)", "")]:
            lines.append(f"{name:<11} {label:<32} {value}")
        lines.append(
            f"{'':<11} {'load avg start→end':<32} {entry['load_start'][0]}→{entry['load_end'][0]}"
        )
    return "\n".join(lines)


def write_charts(results: Path) -> bool:
    """The charts of `results` in a directory of the same name beside it. The JSON is
    written first, so a chart that fails loses no figure: `python -m bench.charts` redraws."""
    if importlib.util.find_spec("matplotlib") is None:  # a bench/dev extra, not runtime
        print("charts: not drawn, matplotlib missing: pip install -e '.[bench]'", file=sys.stderr)
        return False
    from bench.chartdata import read
    from bench.charts import chart_dir, draw

    drawn = draw(read([results]), chart_dir(results))
    print(f"charts: {len(drawn)} in {chart_dir(results)}/ (index.md lists them)")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument(
        "--only", help="comma-separated bench names: " + ", ".join(b.name for b in BENCHES)
    )
    parser.add_argument("--out", help="write the results here instead of bench/results/")
    parser.add_argument(
        "--no-charts", action="store_true", help="skip the charts (bench/charts.py) after the run"
    )
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else None
    unknown = (chosen or set()) - {b.name for b in BENCHES}
    if unknown:
        parser.error(f"unknown bench(es): {', '.join(sorted(unknown))}")
    report: dict[str, Any] = {
        "quick": args.quick,
        "machine": machine(),
        "load_start": load_average(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "benches": {},
    }
    for bench in BENCHES:
        if chosen is not None and bench.name not in chosen:
            continue
        progress(f"bench {bench.name}")
        report["benches"][bench.name] = run_one(bench, args.quick)
    report["load_end"] = load_average()
    if args.out:
        out = Path(args.out)
    else:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"results: {out}")
    charts_ok = args.no_charts or write_charts(out)
    failed = [
        n for n, e in report["benches"].items() if "skipped" not in e and e.get("returncode") != 0
    ]
    sys.exit(1 if failed or not charts_ok else 0)


if __name__ == "__main__":
    main()
