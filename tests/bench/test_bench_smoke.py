"""The bench runner and the worker bench still run end to end, so the bench code cannot rot
silently. Sizes are tiny (`--quick`): the figures are not looked at, only their shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


def test_quick_worker_bench_writes_the_expected_figures(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "worker", "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "QUOTAFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "worker" in done.stdout  # the table

    report = json.loads(out.read_text())
    assert set(report) >= {"quick", "machine", "load_start", "load_end", "benches"}
    entry = report["benches"]["worker"]
    assert entry["returncode"] == 0
    result = entry["result"]
    assert result["bench"] == "worker"
    assert len(result["load_start"]) == len(result["load_end"]) == 3
    (store,) = result["stores"]
    assert store["store"] == "memory://"
    assert store["raw_consumer"]["events_per_s"] > 0
    throughput = store["throughput"]
    assert throughput["updates"] == store["events"]
    assert set(throughput) >= {"events_per_s", "fraction_of_raw", "worker_cpu_cores"}
    latency = store["latency"]
    assert latency["matched"] > 0
    assert set(latency["kafka_to_quota_updates_ms"]) >= {"p50", "p99", "max"}


def test_quick_scale_bench_rebuilds_states_written_into_the_changelog(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale_bench", "--quick", "--keep", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "QUOTAFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    result = json.loads(done.stdout)
    assert result["bench"] == "scale"
    assert (result["keys"], result["tenants"], result["customers_per_tenant"]) == (2000, 200, 10)
    assert result["fill"]["mode"] == "changelog"
    assert result["changelog_records"] == 2000
    assert result["raw_changelog_read"]["records"] == 2000
    # The worker served states it never wrote: each probe answered with the written
    # state's version + 1.
    assert result["verified"]["ok"] is True
    assert result["verified"]["keys"] > 0
    for phase in ("rebuild", "restart"):
        assert result[phase]["ready_s"] > 0
        assert result[phase]["peak_rss_mib"] > 0
    assert result["peak_rss_mib"] >= result["rebuild"]["peak_rss_mib"]
    assert result["data_dir_mib"] > 0
