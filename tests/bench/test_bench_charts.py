"""`python -m bench` draws its charts beside its JSON from what the benches measured, and
`python -m bench.charts` redraws them from a results file alone. Real benches run in quick
mode (sizes for a smoke test); the SVGs are read back as XML, their text being text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from bench.charts import TIMES

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 400) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def svg_text(path: Path) -> str:
    """Every text element of a valid SVG document, joined (fails on anything else)."""
    root = ET.parse(path).getroot()  # noqa: S314 - a file this test run just drew
    assert root.tag == f"{SVG}svg", path
    return "\n".join("".join(t.itertext()) for t in root.iter(f"{SVG}text"))


def strip(doc: Any, key: str) -> Any:
    """`doc` without any `key`, at any depth: a results file from before that key."""
    if isinstance(doc, dict):
        return {k: strip(v, key) for k, v in doc.items() if k != key}
    if isinstance(doc, list):
        return [strip(v, key) for v in doc]
    return doc


@pytest.fixture(scope="module")
def quick_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `python -m bench --quick` of a bench without Kafka, the enforcement-lag bench
    and the scale bench: the results file, its charts beside it."""
    results = tmp_path_factory.mktemp("bench-charts") / "run.json"
    out = run(
        *("-m", "bench", "--quick", "--only", "edge,enforcement,scale", "--out", str(results)),
        env={"QUOTAFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap},
    )
    assert f"charts: 8 in {results.with_suffix('')}/" in out, out[-2000:]
    return results


def test_the_bench_run_draws_every_declared_chart_beside_its_json(quick_run: Path) -> None:
    charts = quick_run.with_suffix("")
    assert sorted(p.name for p in charts.iterdir()) == sorted(
        [
            "edge-check-latency.svg",
            "edge-http-latency.svg",
            "edge-throughput.svg",
            "enforcement-lag.svg",
            "enforcement-overshoot.svg",
            "index.md",
            "scale-changelog-read.svg",
            "scale-ready-times.svg",
            "scale-rss.svg",
        ]
    )
    index = (charts / "index.md").read_text()
    assert "![enforcement-lag](enforcement-lag.svg)" in index
    assert "Not drawn" not in index


def test_a_latency_cdf_shows_each_scenario_with_its_sample_count_and_axis(
    quick_run: Path,
) -> None:
    report = json.loads(quick_run.read_text())
    check = report["benches"]["edge"]["result"]["check"]
    # What the bench recorded for the chart: its whole sample, in order, min to max.
    record = check["quotaflow_check"]["cdf"]
    assert (record["unit"], record["n"]) == ("us", 5000)
    ps = [p for p, _ in record["points"]]
    values = [v for _, v in record["points"]]
    assert ps[0] == 0.0
    assert ps[-1] == 1.0
    assert ps == sorted(ps)
    assert values == sorted(values)
    assert values[0] <= check["quotaflow_check"]["p50_us"] <= values[-1]
    # 5,000 samples resolve p99.9 but not p99.99.
    assert 0.999 in ps
    assert 0.9999 not in ps

    text = svg_text(quick_run.with_suffix("") / "edge-check-latency.svg")
    for scenario in (
        "check() · n=5,000",
        "check(), rate limit + feature · n=5,000",
        "consume() · n=5,000",
        "baseline: dict of pydantic models, check · n=5,000",
    ):
        assert scenario in text, scenario
    assert "latency (µs, log scale)" in text
    assert "target p99 ≤ 5 µs" in text
    assert "[quick run]" in text
    edge = report["benches"]["edge"]
    load = f"load avg (1 min) {edge['load_start'][0]:g} → {edge['load_end'][0]:g}"
    assert f"bench edge: run.json, started {report['started_at']}, {load}" in text


def test_the_enforcement_lag_chart_draws_the_lag_of_each_stage_beside_the_baseline(
    quick_run: Path,
) -> None:
    report = json.loads(quick_run.read_text())
    three = report["benches"]["enforcement"]["result"]["three_nodes"]
    base = report["benches"]["enforcement"]["result"]["baseline_single_node"]
    text = svg_text(quick_run.with_suffix("") / "enforcement-lag.svg")
    n, n_base = three["crossing_to_denied_all_nodes_ms"]["n"], base["customers"]
    assert f"denied at all 3 nodes · n={n}" in text
    assert f"exhausted push applied at all 3 nodes · n={n}" in text
    assert f"baseline: all traffic on 1 node, denied · n={n_base}" in text
    # Linear: the baseline's lag is 0 ms, which a log axis could not show.
    assert "latency (ms, linear)" in text
    assert "target p99 ≤ 2 s" in text


def test_ratio_bars_state_each_figure_against_its_baseline_from_the_same_run(
    quick_run: Path,
) -> None:
    check = json.loads(quick_run.read_text())["benches"]["edge"]["result"]["check"]
    ours = check["quotaflow_consume"]["calls_per_second"]
    base = check["baseline_pydantic_dict_consume"]["calls_per_second"]
    text = svg_text(quick_run.with_suffix("") / "edge-throughput.svg")
    assert f"{ours / base:.3g} {TIMES} ({ours:,.0f} vs {base:,.0f} calls/s)" in text
    assert f"baseline, same run = 1 {TIMES}" in text
    assert f"{TIMES} the baseline (calls/s; higher is better)" in text


def test_the_scale_chart_puts_restart_and_rebuild_against_keys(quick_run: Path) -> None:
    scale = json.loads(quick_run.read_text())["benches"]["scale"]["result"]
    text = svg_text(quick_run.with_suffix("") / "scale-ready-times.svg")
    assert "keys (tenants x 10 customers) (log scale)" in text
    for phase, name in (
        ("restart", "restart on its own data dir"),
        ("rebuild", "rebuild from the changelog"),
    ):
        assert name in text
        assert f"{scale[phase]['ready_s']:,.3g}" in text  # the point's own label
    assert "restart target ≤ 10 s" in text
    assert "rebuild target ≤ 60 s" in text
    assert "One size measured so far" in text


def test_charts_redraw_from_the_results_file_alone_identically(
    quick_run: Path, tmp_path: Path
) -> None:
    out = run("-m", "bench.charts", str(quick_run), "--out", str(tmp_path))
    first = quick_run.with_suffix("")
    drawn = sorted(p.name for p in tmp_path.glob("*.svg"))
    assert drawn == sorted(p.name for p in first.glob("*.svg"))
    assert sorted(Path(line).name for line in out.split()) == drawn
    # Same data, same bytes: a redraw of a quiet machine's run changes nothing in git.
    for name in drawn:
        assert (tmp_path / name).read_bytes() == (first / name).read_bytes(), name


def test_results_from_before_the_cdf_record_draw_their_percentiles_and_say_so(
    quick_run: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps(strip(json.loads(quick_run.read_text()), "cdf")))
    run("-m", "bench.charts", str(old), "--out", str(tmp_path / "charts"))
    text = svg_text(tmp_path / "charts" / "edge-check-latency.svg")
    # The in-process records kept p50, p99 and p99.9 (and a max, with no sample count to
    # place it by): points, not curves, and the caption says so.
    assert "Points, not curves: this run kept only p50/p99/p99.9" in text
    http = svg_text(tmp_path / "charts" / "edge-http-latency.svg")
    assert "p50/p99/max" in http  # HTTP records name their sample count: max is placed
